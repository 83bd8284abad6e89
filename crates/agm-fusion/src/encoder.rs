//! Encoders built as a list of layers, named by position as PyTorch's `nn.Sequential` does.

use candle_core::{DType, Device, Result, Tensor};

use crate::layers::{flatten, relu};

/// One modality's encoder: raw input `[B, ...]` to a feature `[B, out_dim]`.
///
/// Fusions only see features, so any encoder works with any fusion, and the fast Shapley path
/// can run each encoder once and recombine features.
pub trait Encoder: Send + Sync {
    /// The feature of every sample. `dropout_seed` seeds this pass's dropout masks.
    fn forward_t(&self, x: &Tensor, train: bool, dropout_seed: u64) -> Result<Tensor>;

    /// The feature's width: `forward_t` returns `[batch, out_dim]`.
    fn out_dim(&self) -> usize;

    /// Whether training and evaluation mode compute different functions (batch norm, dropout).
    /// Where this is false the fast Shapley path equals the faithful one exactly.
    fn mode_dependent(&self) -> bool {
        true
    }

    /// The evaluation-mode feature of one all-zero sample of `sample_shape`, `[1, out_dim]`: what
    /// a muted modality contributes (the fast Shapley path computes it once per step).
    /// Encoders for which a smaller zero input gives the same feature override this.
    fn zero_feature(&self, sample_shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        let zeros = Tensor::zeros([&[1], sample_shape].concat(), dtype, device)?;
        self.forward_t(&zeros, false, 0)
    }

    /// `forward_t(x, train, dropout_seed)` and then `zero_feature` of `x`'s sample shape, in that
    /// order (a training pass may change what evaluation mode computes). In evaluation mode, or
    /// without mode-dependent layers, both are the same per-sample function, so the zero sample
    /// rides along as one more row of the batch: one pass, and one gradient product per weight
    /// instead of two and an addition. Mode-dependent encoders that can still run both in one
    /// training pass override this.
    fn forward_with_zero_feature(&self, x: &Tensor, train: bool, dropout_seed: u64) -> Result<(Tensor, Tensor)> {
        if self.mode_dependent() && train {
            let features = self.forward_t(x, train, dropout_seed)?;
            return Ok((features, self.zero_feature(&x.dims()[1..], x.dtype(), x.device())?));
        }
        let b = x.dim(0)?;
        let zero = Tensor::zeros([&[1], &x.dims()[1..]].concat(), x.dtype(), x.device())?;
        let out = self.forward_t(&Tensor::cat(&[x, &zero], 0)?, train, dropout_seed)?;
        Ok((out.narrow(0, 0, b)?, out.narrow(0, b, 1)?))
    }

    /// The faithful Shapley path's passes of this encoder: `forward_t(x, true, dropout_seed)`,
    /// then the evaluation-mode features of `eval_x` and, when `with_zero`, [`Self::zero_feature`]
    /// of its sample shape, in that order (the training pass changes what evaluation mode
    /// computes). Encoders that can run all of it as one batch override this: one pass, and one
    /// gradient product per weight instead of two and an addition.
    fn forward_train_then_eval(
        &self,
        x: &Tensor,
        dropout_seed: u64,
        eval_x: &Tensor,
        with_zero: bool,
    ) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        train_then_eval_apart(self, x, dropout_seed, eval_x, with_zero)
    }
}

/// [`Encoder::forward_train_then_eval`] as separate passes: the trait's default, and where an
/// override cannot carry the evaluation samples along.
pub(crate) fn train_then_eval_apart<E: Encoder + ?Sized>(
    enc: &E,
    x: &Tensor,
    dropout_seed: u64,
    eval_x: &Tensor,
    with_zero: bool,
) -> Result<(Tensor, Tensor, Option<Tensor>)> {
    let features = enc.forward_t(x, true, dropout_seed)?;
    if with_zero {
        let (eval, zero) = enc.forward_with_zero_feature(eval_x, false, 0)?;
        return Ok((features, eval, Some(zero)));
    }
    Ok((features, enc.forward_t(eval_x, false, 0)?, None))
}
use crate::{BatchNorm, Conv2d, Linear, ParamBuilder};

/// One layer of a [`SequentialEncoder`].
#[derive(Clone, Debug, PartialEq)]
pub enum EncoderLayer {
    /// Flattens every dimension after the batch one, row-major: `[B, ...]` to `[B, n]`.
    Flatten,
    /// ReLU, element-wise.
    Relu,
    /// `Linear(in_dim, out_dim)` with a bias, on the last dimension. The last one sets the
    /// encoder's output width.
    Linear {
        /// Input features.
        in_dim: usize,
        /// Output features.
        out_dim: usize,
    },
    /// Square kernel, stride 1, no padding.
    Conv2d {
        /// Input channels.
        in_ch: usize,
        /// Output channels.
        out_ch: usize,
        /// Kernel side.
        kernel: usize,
    },
    /// [`BatchNorm`] over dimension 1 (`[B, C]` or `[B, C, ...]`).
    BatchNorm {
        /// Channels, the size of dimension 1.
        channels: usize,
        /// Added to the variance.
        eps: f64,
    },
    /// Inverted [`dropout`](crate::dropout) in training mode; the layer at position `i` draws
    /// from the pass's seed plus `i`.
    Dropout {
        /// Probability of zeroing an element.
        p: f64,
    },
}

#[derive(Debug)]
enum Built {
    Flatten,
    Relu,
    Linear(Linear),
    Conv2d(Conv2d),
    BatchNorm(BatchNorm),
    Dropout(f64),
}

/// Layers applied in order; variable names are `<prefix>.<position>.<field>`.
#[derive(Debug)]
pub struct SequentialEncoder {
    layers: Vec<Built>,
    out_dim: usize,
}

impl SequentialEncoder {
    /// Builds `layers` under `pb`, layer `i`'s variables named `<prefix>.<i>.<field>`. The last
    /// `Linear`'s `out_dim` is taken as the feature width (layers after it are not checked against
    /// it); errs when there is no `Linear`.
    pub fn new(pb: &ParamBuilder, layers: &[EncoderLayer]) -> Result<Self> {
        let mut built = Vec::with_capacity(layers.len());
        let mut out_dim = 0;
        for (i, layer) in layers.iter().enumerate() {
            let lpb = pb.pp(i.to_string());
            built.push(match *layer {
                EncoderLayer::Flatten => Built::Flatten,
                EncoderLayer::Relu => Built::Relu,
                EncoderLayer::Linear { in_dim, out_dim: o } => {
                    out_dim = o;
                    Built::Linear(Linear::new(&lpb, in_dim, o, true)?)
                }
                EncoderLayer::Conv2d { in_ch, out_ch, kernel } => {
                    Built::Conv2d(Conv2d::new(&lpb, in_ch, out_ch, kernel)?)
                }
                EncoderLayer::BatchNorm { channels, eps } => Built::BatchNorm(BatchNorm::new(&lpb, channels, eps)?),
                EncoderLayer::Dropout { p } => Built::Dropout(p),
            });
        }
        if out_dim == 0 {
            candle_core::bail!("an encoder needs at least one Linear layer to define its output size");
        }
        Ok(Self { layers: built, out_dim })
    }

    /// The feature width: the last `Linear` layer's `out_dim`.
    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    /// The layers in order on `x` ([`Encoder::forward_t`]); `train` selects batch norm's and
    /// dropout's mode.
    pub fn forward_t(&self, x: &Tensor, train: bool, dropout_seed: u64) -> Result<Tensor> {
        Encoder::forward_t(self, x, train, dropout_seed)
    }
}

impl Encoder for SequentialEncoder {
    fn out_dim(&self) -> usize {
        self.out_dim
    }

    fn mode_dependent(&self) -> bool {
        self.layers.iter().any(|l| match l {
            Built::BatchNorm(_) => true,
            Built::Dropout(p) => *p > 0.0,
            _ => false,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool, dropout_seed: u64) -> Result<Tensor> {
        let mut h = x.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            h = match layer {
                Built::Flatten => flatten(&h)?,
                Built::Relu => relu(&h)?,
                Built::Linear(l) => l.forward(&h)?,
                Built::Conv2d(c) => c.forward(&h)?,
                Built::BatchNorm(bn) => bn.forward_t(&h, train)?,
                Built::Dropout(p) => crate::dropout(&h, *p, train, dropout_seed.wrapping_add(i as u64))?,
            };
        }
        Ok(h)
    }
}
