//! A one-layer, batch-first LSTM with PyTorch's variable names, initialisation and gate order.

use candle_core::{Result, Tensor, Var};

use crate::{ParamBuilder, ParamInit};

/// The four variables of one direction.
#[derive(Clone, Debug)]
struct Direction {
    weight_ih: Var,
    weight_hh: Var,
    bias_ih: Var,
    bias_hh: Var,
}

/// PyTorch's `nn.LSTM(input, hidden, num_layers=1, batch_first=True, bidirectional=…)`.
///
/// Variables (under the builder's prefix): `weight_ih_l0` `[4H, I]`, `weight_hh_l0` `[4H, H]`,
/// `bias_ih_l0` `[4H]`, `bias_hh_l0` `[4H]`, plus the same names with `_reverse` for the backward
/// direction. Gates are stacked in PyTorch's order `i, f, g, o`; every variable starts as
/// `U(−1/√H, 1/√H)`; the initial hidden and cell states are zero. The forward pass is a time loop
/// over differentiable candle ops, so gradients reach the inputs and every variable.
#[derive(Clone, Debug)]
pub struct Lstm {
    dirs: Vec<Direction>,
    input_size: usize,
    hidden_size: usize,
}

impl Lstm {
    /// The LSTM under `pb`: one direction, or two with `bidirectional`; errs only if a variable
    /// name is taken already.
    pub fn new(pb: &ParamBuilder, input_size: usize, hidden_size: usize, bidirectional: bool) -> Result<Self> {
        let bound = 1.0 / (hidden_size as f64).sqrt();
        let init = ParamInit::Uniform { bound };
        let suffixes: &[&str] = if bidirectional { &["", "_reverse"] } else { &[""] };
        let dirs = suffixes
            .iter()
            .map(|s| {
                Ok(Direction {
                    weight_ih: pb.param((4 * hidden_size, input_size), &format!("weight_ih_l0{s}"), init)?,
                    weight_hh: pb.param((4 * hidden_size, hidden_size), &format!("weight_hh_l0{s}"), init)?,
                    bias_ih: pb.param(4 * hidden_size, &format!("bias_ih_l0{s}"), init)?,
                    bias_hh: pb.param(4 * hidden_size, &format!("bias_hh_l0{s}"), init)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { dirs, input_size, hidden_size })
    }

    /// `H`, the hidden width of each direction.
    pub fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    /// 1, or 2 when bidirectional.
    pub fn num_directions(&self) -> usize {
        self.dirs.len()
    }

    /// Output width: `hidden_size · num_directions`.
    pub fn out_dim(&self) -> usize {
        self.hidden_size * self.dirs.len()
    }

    /// `[B, T, I] -> [B, T, H·dirs]`: every time step's hidden state, the forward direction's
    /// first and the backward direction's second along the last axis (PyTorch's layout).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, t, i) = x.dims3()?;
        if i != self.input_size {
            candle_core::bail!("LSTM expects {} input features, got {i}", self.input_size);
        }
        if t == 0 {
            candle_core::bail!("LSTM needs at least one time step, got a sequence of length 0");
        }
        let outs = self.dirs.iter().enumerate().map(|(d, dir)| self.run(dir, x, d == 1)).collect::<Result<Vec<_>>>()?;
        if outs.len() == 1 {
            Ok(outs.into_iter().next().expect("one direction"))
        } else {
            Tensor::cat(&outs, 2)
        }
    }

    fn run(&self, dir: &Direction, x: &Tensor, reverse: bool) -> Result<Tensor> {
        let (b, t, i) = x.dims3()?;
        let h4 = 4 * self.hidden_size;
        let hs = self.hidden_size;
        // The input projection of every step in one matmul; both biases enter every gate sum.
        let bias = (dir.bias_ih.as_tensor() + dir.bias_hh.as_tensor())?;
        let xw = x
            .reshape((b * t, i))?
            .matmul(&dir.weight_ih.as_tensor().t()?)?
            .broadcast_add(&bias)?
            .reshape((b, t, h4))?;
        let w_hh_t = dir.weight_hh.as_tensor().t()?;
        let mut h = Tensor::zeros((b, hs), x.dtype(), x.device())?;
        let mut c = h.clone();
        let mut outs: Vec<Option<Tensor>> = vec![None; t];
        for step in 0..t {
            let pos = if reverse { t - 1 - step } else { step };
            // The step-0 recurrent product is zero but keeps `weight_hh` in the graph, so it gets
            // a (zero) gradient even for one-step sequences, as in PyTorch.
            let gates = (xw.narrow(1, pos, 1)?.squeeze(1)? + h.matmul(&w_hh_t)?)?;
            let ig = candle_nn::ops::sigmoid(&gates.narrow(1, 0, hs)?)?;
            let fg = candle_nn::ops::sigmoid(&gates.narrow(1, hs, hs)?)?;
            let gg = gates.narrow(1, 2 * hs, hs)?.tanh()?;
            let og = candle_nn::ops::sigmoid(&gates.narrow(1, 3 * hs, hs)?)?;
            c = ((fg * &c)? + (ig * gg)?)?;
            h = (og * c.tanh()?)?;
            outs[pos] = Some(h.clone());
        }
        let outs: Vec<Tensor> = outs.into_iter().map(|o| o.expect("every step ran")).collect();
        Tensor::stack(&outs, 1)
    }
}

/// As a modality encoder, `[B, T, I]` to the final hidden state of each direction
/// (`[B, H · dirs]`): the forward direction's at the last step, the backward one's at the first.
impl crate::Encoder for Lstm {
    fn forward_t(&self, x: &Tensor, _train: bool, _dropout_seed: u64) -> Result<Tensor> {
        let out = self.forward(x)?;
        let (t, h) = (out.dim(1)?, self.hidden_size());
        let last = out.narrow(1, t - 1, 1)?.squeeze(1)?.narrow(1, 0, h)?;
        if self.num_directions() == 1 {
            return Ok(last);
        }
        let first = out.narrow(1, 0, 1)?.squeeze(1)?.narrow(1, h, h)?;
        Tensor::cat(&[last, first], 1)
    }

    fn out_dim(&self) -> usize {
        Lstm::out_dim(self)
    }

    fn mode_dependent(&self) -> bool {
        false
    }
}
