//! Layers with PyTorch's default initialisation and explicit train/eval behaviour.

use candle_core::{Result, Tensor, Var};

use crate::{ParamBuilder, ParamInit};

/// `y = x Wᵀ + b` with `W` of shape `[out, in]`, initialised as PyTorch's `nn.Linear`.
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Var,
    bias: Option<Var>,
}

impl Linear {
    /// `Linear(in_dim, out_dim)` under `pb`: `weight` `[out_dim, in_dim]` and, with `bias`, `bias`
    /// `[out_dim]`, both drawn from `U(−1/√in_dim, 1/√in_dim)`.
    pub fn new(pb: &ParamBuilder, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let bound = 1.0 / (in_dim as f64).sqrt();
        let weight = pb.param((out_dim, in_dim), "weight", ParamInit::Uniform { bound })?;
        let bias = if bias { Some(pb.param(out_dim, "bias", ParamInit::Uniform { bound })?) } else { None };
        Ok(Self { weight, bias })
    }

    /// A layer over existing variables (`weight [out, in]`), e.g. copies of another layer's.
    pub fn from_vars(weight: Var, bias: Option<Var>) -> Self {
        Self { weight, bias }
    }

    /// `x [..., in]` to `[..., out]`: any leading dimensions, as one 2-D product over all rows.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        rowwise_linear(x, self.weight.as_tensor(), self.bias.as_ref().map(Var::as_tensor))
    }

    /// The weight variable, `[out, in]`.
    pub fn weight(&self) -> &Var {
        &self.weight
    }

    /// The bias variable, `[out]`, if the layer has one.
    pub fn bias(&self) -> Option<&Var> {
        self.bias.as_ref()
    }
}

/// 2-D convolution with square kernel, stride 1 and no padding (the parity network's layer),
/// initialised as PyTorch's `nn.Conv2d`.
#[derive(Clone, Debug)]
pub struct Conv2d {
    weight: Var,
    bias: Var,
}

impl Conv2d {
    /// `Conv2d(in_ch, out_ch, kernel)` under `pb`: `weight` `[out_ch, in_ch, kernel, kernel]` and
    /// `bias` `[out_ch]`, both drawn from `U(±1/√(in_ch · kernel²))`.
    pub fn new(pb: &ParamBuilder, in_ch: usize, out_ch: usize, kernel: usize) -> Result<Self> {
        let bound = 1.0 / ((in_ch * kernel * kernel) as f64).sqrt();
        let weight = pb.param((out_ch, in_ch, kernel, kernel), "weight", ParamInit::Uniform { bound })?;
        let bias = pb.param(out_ch, "bias", ParamInit::Uniform { bound })?;
        Ok(Self { weight, bias })
    }

    /// `x [B, in_ch, H, W]` to `[B, out_ch, H − kernel + 1, W − kernel + 1]`, through candle's own
    /// `conv2d` (not agm-kernels').
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.conv2d(self.weight.as_tensor(), 0, 1, 1, 1)?;
        y.broadcast_add(&self.bias.as_tensor().reshape((1, (), 1, 1))?)
    }
}

/// Batch normalisation over `[B, C]` or `[B, C, ...]` with PyTorch semantics: training mode
/// normalises with the biased batch variance and updates the running statistics with the
/// unbiased one (momentum 0.1); evaluation mode reads the running statistics as constants.
#[derive(Debug)]
pub struct BatchNorm {
    weight: Var,
    bias: Var,
    running_mean: Var,
    running_var: Var,
    num_batches_tracked: Var,
    eps: f64,
    momentum: f64,
}

impl BatchNorm {
    /// `BatchNorm(channels)` under `pb` with PyTorch's start: trainable `weight` 1 and `bias` 0,
    /// buffers `running_mean` 0, `running_var` 1 and `num_batches_tracked` 0; momentum 0.1.
    pub fn new(pb: &ParamBuilder, channels: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: pb.param(channels, "weight", ParamInit::Const(1.0))?,
            bias: pb.param(channels, "bias", ParamInit::Const(0.0))?,
            running_mean: pb.buffer(channels, "running_mean", ParamInit::Const(0.0))?,
            running_var: pb.buffer(channels, "running_var", ParamInit::Const(1.0))?,
            num_batches_tracked: pb.buffer((), "num_batches_tracked", ParamInit::Const(0.0))?,
            eps,
            momentum: 0.1,
        })
    }

    /// Normalises `x` in training mode (`train`: batch statistics, running ones updated) or in
    /// evaluation mode (running statistics).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_mode(x, NormMode::from_train(train), false)
    }

    /// `relu(self.forward_t(x, train))` as one op.
    pub fn forward_relu_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_mode(x, NormMode::from_train(train), true)
    }

    /// Normalises `x` as `mode` says, followed by a ReLU when `relu`; training rows update the
    /// running statistics.
    pub fn forward_mode(&self, x: &Tensor, mode: NormMode, relu: bool) -> Result<Tensor> {
        let (w, b) = (self.weight.as_tensor(), self.bias.as_tensor());
        let running = (&self.running_mean.as_tensor().detach(), &self.running_var.as_tensor().detach());
        let op = if relu { agm_kernels::batch_norm_relu } else { agm_kernels::batch_norm };
        let tail = match mode {
            NormMode::Eval => return Ok(op(x, w, b, Some(running), self.eps)?.0),
            NormMode::Train => 0,
            NormMode::TrainWithEvalTail(tail) => tail,
        };
        let (y, stored) = agm_kernels::batch_norm_train(x, w, b, running, self.momentum, tail, self.eps, relu)?;
        // The counter lives in a variable, so checkpoints restore it with the rest.
        stored.store(&self.running_mean, &self.running_var, &self.num_batches_tracked)?;
        Ok(y)
    }
}

/// How [`BatchNorm::forward_mode`] normalises a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormMode {
    /// The batch's own statistics; the running ones are updated.
    Train,
    /// The running statistics, as constants.
    Eval,
    /// Training mode for all but the last `n` samples, which are normalised in evaluation mode
    /// with the running statistics as this batch leaves them: what a training pass followed by
    /// an evaluation pass over those `n` samples computes, in one pass.
    TrainWithEvalTail(usize),
}

impl NormMode {
    /// [`NormMode::Train`] when `train`, else [`NormMode::Eval`].
    pub fn from_train(train: bool) -> Self {
        if train {
            Self::Train
        } else {
            Self::Eval
        }
    }
}

/// PyTorch's `nn.LayerNorm` over the last dimension (weight 1, bias 0 at start).
#[derive(Clone, Debug)]
pub struct LayerNorm {
    weight: Var,
    bias: Var,
    eps: f64,
}

impl LayerNorm {
    /// `LayerNorm(dim, eps)` under `pb`: `weight` `[dim]` 1 and `bias` `[dim]` 0.
    pub fn new(pb: &ParamBuilder, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: pb.param(dim, "weight", ParamInit::Const(1.0))?,
            bias: pb.param(dim, "bias", ParamInit::Const(0.0))?,
            eps,
        })
    }

    /// Normalises `x [..., dim]` over its last dimension (biased variance, `eps` added to it),
    /// then scales and shifts ([`agm_kernels::layer_norm`]).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        agm_kernels::layer_norm(x, self.weight.as_tensor(), self.bias.as_tensor(), self.eps)
    }
}

/// Inverted dropout with a mask that is a function of `seed` (and each element's index), so runs
/// and resumes are reproducible and the CPU and CUDA agree ([`agm_kernels::dropout`]). Identity
/// when `train` is false or `p == 0`.
pub fn dropout(x: &Tensor, p: f64, train: bool, seed: u64) -> Result<Tensor> {
    if !train {
        return Ok(x.clone());
    }
    dropout_leading(x, p, seed, x.elem_count())
}

/// [`dropout`] in training on the first `count` elements of `x` only ([`agm_kernels::dropout_leading`]).
pub(crate) fn dropout_leading(x: &Tensor, p: f64, seed: u64, count: usize) -> Result<Tensor> {
    if p == 0.0 || count == 0 {
        return Ok(x.clone());
    }
    agm_kernels::dropout_leading(x, p, seed, count)
}

/// `x [..., in] · w [out, in]ᵀ (+ b)` as one 2-D [`agm_kernels::linear`] over all leading rows.
pub(crate) fn rowwise_linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    if x.rank() == 2 {
        return agm_kernels::linear(x, w, b);
    }
    let dims = x.dims();
    let (lead, last) = dims.split_at(dims.len() - 1);
    let y = agm_kernels::linear(&x.reshape((lead.iter().product::<usize>(), last[0]))?, w, b)?;
    y.reshape([lead, &[w.dim(0)?]].concat())
}

/// Flattens every dimension after the batch dimension, row-major.
pub(crate) fn flatten(x: &Tensor) -> Result<Tensor> {
    x.flatten_from(1)
}

pub(crate) fn relu(x: &Tensor) -> Result<Tensor> {
    agm_kernels::relu(x)
}
