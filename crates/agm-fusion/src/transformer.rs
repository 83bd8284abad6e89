//! The reference's `Transformer(n_features, dim, n_head, n_layers)` sequence encoder: a bias-free
//! kernel-1 Conv1d projection, then PyTorch's post-norm `nn.TransformerEncoder`, read at the
//! first time step.
//!
//! Variable names follow PyTorch (`conv.weight`, `transformer.layers.0.self_attn.in_proj_weight`,
//! ...) so a checkpoint of the reference loads by name.

use candle_core::{DType, Device, Result, Tensor, Var};

use crate::layers::{dropout_leading, relu, rowwise_linear};
use crate::{dropout, Encoder, LayerNorm, Linear, ParamBuilder, ParamInit};

/// Sizes of a [`Transformer`] encoder.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TransformerConfig {
    /// Features per time step (`n_features`).
    pub in_features: usize,
    /// Model width (`dim`, PyTorch's `d_model`).
    pub dim: usize,
    /// Attention heads; must divide `dim`.
    pub heads: usize,
    /// Encoder layers, at least one.
    pub layers: usize,
    /// Width of the feed-forward block (`dim_feedforward`).
    pub ff_dim: usize,
    /// Dropout probability on attention weights, after attention, inside and after the
    /// feed-forward block.
    pub dropout: f64,
}

impl TransformerConfig {
    /// UR-Funny's encoder: `Transformer(in_features, 768, 4, 8)` with PyTorch's layer defaults
    /// (feed-forward 2048, dropout 0.1).
    pub fn urfunny(in_features: usize) -> Self {
        Self { in_features, dim: 768, heads: 4, layers: 8, ff_dim: 2048, dropout: 0.1 }
    }
}

/// Creates the variables of one encoder layer: drawn for the first layer, copied from it for the
/// others (PyTorch deep-copies one layer, so all start identical).
struct LayerVars<'a> {
    pb: ParamBuilder,
    template: Option<&'a EncoderLayer>,
}

impl LayerVars<'_> {
    fn var(&self, name: &str, shape: &[usize], init: ParamInit, pick: impl Fn(&EncoderLayer) -> &Var) -> Result<Var> {
        match self.template {
            Some(t) => self.pb.param_from(name, pick(t).as_tensor()),
            None => self.pb.param(shape, name, init),
        }
    }
}

/// PyTorch's `TransformerEncoderLayer(dim, nhead, dim_feedforward, dropout, activation=relu,
/// norm_first=False)`.
#[derive(Debug)]
struct EncoderLayer {
    in_proj: Linear,
    out_proj: Linear,
    linear1: Linear,
    linear2: Linear,
    norm1: LayerNorm,
    norm2: LayerNorm,
}

impl EncoderLayer {
    fn new(pb: &ParamBuilder, cfg: &TransformerConfig, template: Option<&EncoderLayer>) -> Result<Self> {
        let (d, f) = (cfg.dim, cfg.ff_dim);
        let attn = LayerVars { pb: pb.pp("self_attn"), template };
        let zero = ParamInit::Const(0.0);
        // PyTorch's nn.Linear default: kaiming_uniform(a=√5) for the weight, which is
        // U(±1/√fan_in), and U(±1/√fan_in) for the bias.
        let linear_init = |fan_in: usize| ParamInit::Uniform { bound: 1.0 / (fan_in as f64).sqrt() };
        // MultiheadAttention: xavier_uniform over the packed [3d, d] weight, zero biases; the
        // output projection keeps nn.Linear's default weight.
        let xavier = ParamInit::Uniform { bound: (6.0 / (d + 3 * d) as f64).sqrt() };
        let in_proj = Linear::from_vars(
            attn.var("in_proj_weight", &[3 * d, d], xavier, |t| t.in_proj.weight())?,
            Some(attn.var("in_proj_bias", &[3 * d], zero, |t| t.in_proj.bias().expect("a biased layer"))?),
        );
        let out = LayerVars { pb: pb.pp("self_attn").pp("out_proj"), template };
        let out_proj = Linear::from_vars(
            out.var("weight", &[d, d], linear_init(d), |t| t.out_proj.weight())?,
            Some(out.var("bias", &[d], zero, |t| t.out_proj.bias().expect("a biased layer"))?),
        );
        let l1 = LayerVars { pb: pb.pp("linear1"), template };
        let linear1 = Linear::from_vars(
            l1.var("weight", &[f, d], linear_init(d), |t| t.linear1.weight())?,
            Some(l1.var("bias", &[f], linear_init(d), |t| t.linear1.bias().expect("a biased layer"))?),
        );
        let l2 = LayerVars { pb: pb.pp("linear2"), template };
        let linear2 = Linear::from_vars(
            l2.var("weight", &[d, f], linear_init(f), |t| t.linear2.weight())?,
            Some(l2.var("bias", &[d], linear_init(f), |t| t.linear2.bias().expect("a biased layer"))?),
        );
        // LayerNorm starts at weight 1, bias 0: identical in every layer without copying.
        let norm1 = LayerNorm::new(&pb.pp("norm1"), d, 1e-5)?;
        let norm2 = LayerNorm::new(&pb.pp("norm2"), d, 1e-5)?;
        Ok(Self { in_proj, out_proj, linear1, linear2, norm1, norm2 })
    }

    /// `x [B, L, d]`; `seeds` yields this layer's four dropout seeds.
    fn forward_t(&self, x: &Tensor, heads: usize, p: f64, train: bool, seeds: [u64; 4]) -> Result<Tensor> {
        let (b, l, d) = x.dims3()?;
        let out = self.forward_parts(&x.reshape((b * l, d))?, &[Part { batch: b, len: l, train }], heads, p, seeds)?;
        out.reshape((b, l, d))
    }

    /// The layer on several batches of sequences at once: `x [Σ B·L, d]` holds each part's
    /// tokens in turn. The per-token maps (projections, feed-forward, norms) run once over all
    /// tokens, so each weight gradient is one product; attention stays per part. Every part gets
    /// exactly what [`Self::forward_t`] would give it alone.
    fn forward_parts(&self, x: &Tensor, parts: &[Part], heads: usize, p: f64, seeds: [u64; 4]) -> Result<Tensor> {
        let qkv = self.in_proj.forward(x)?;
        let ctx = Part::map(parts, &qkv, |part, qkv| attention(qkv, part, heads, p, seeds[0]))?;
        // A mask depends on the element index alone, so when only the first part trains, one op
        // over all rows gives each part the mask it gets alone.
        let train_rows = Part::leading_train_rows(parts);
        let dropped = |t: &Tensor, seed: u64| match train_rows {
            Some(rows) => dropout_leading(t, p, seed, rows * t.dim(1)?),
            None => Part::map(parts, t, |part, t| dropout(t, p, part.train, seed)),
        };
        let sa = self.out_proj.forward(&ctx)?;
        let x = self.norm1.forward(&(x + dropped(&sa, seeds[1])?)?)?;
        let ff = dropped(&relu(&self.linear1.forward(&x)?)?, seeds[2])?;
        let ff = self.linear2.forward(&ff)?;
        self.norm2.forward(&(&x + dropped(&ff, seeds[3])?)?)
    }
}

/// Multi-head self-attention of one part's sequences from their projections `qkv [B·L, 3d]`.
fn attention(qkv: &Tensor, part: &Part, heads: usize, p: f64, seed: u64) -> Result<Tensor> {
    let Part { batch: b, len: l, train } = *part;
    let d = qkv.dim(1)? / 3;
    if l == 1 && !(train && p > 0.0) {
        // A lone token attends to itself with weight exactly 1, whose gradient is exactly 0: its
        // context is its value. This is the zero step of the fast Shapley path, which otherwise
        // costs a dozen small ops per layer and twice as many in the backward.
        return qkv.narrow(1, 2 * d, d)?.contiguous();
    }
    let hd = d / heads;
    // [B·L, 3d] → [B, heads, L, hd] for each of q, k, v.
    let split = |i: usize| -> Result<Tensor> {
        qkv.narrow(1, i * d, d)?.reshape((b, l, heads, hd))?.transpose(1, 2)?.contiguous()
    };
    // PyTorch scales the queries before the product.
    let q = (split(0)? * (1.0 / (hd as f64).sqrt()))?;
    let (k, v) = (split(1)?, split(2)?);
    let scores = agm_kernels::matmul(&q, &k.t()?)?;
    let attn = agm_kernels::softmax_last_dim(&scores)?;
    let attn = dropout(&attn, p, train, seed)?;
    agm_kernels::matmul(&attn, &v)?.transpose(1, 2)?.contiguous()?.reshape((b * l, d))
}

/// One batch of `batch` sequences of `len` tokens among the rows of [`EncoderLayer::forward_parts`],
/// in training mode or not.
#[derive(Clone, Copy, Debug)]
struct Part {
    batch: usize,
    len: usize,
    train: bool,
}

impl Part {
    fn rows(&self) -> usize {
        self.batch * self.len
    }

    /// The training rows when only the first part may train: they lead, as
    /// [`dropout_leading`] needs.
    fn leading_train_rows(parts: &[Part]) -> Option<usize> {
        let (first, rest) = parts.split_first()?;
        if rest.iter().any(|p| p.train) {
            return None;
        }
        Some(if first.train { first.rows() } else { 0 })
    }

    /// `f` on each part's rows of `t`, the results stacked again (no copy for a single part).
    fn map(parts: &[Part], t: &Tensor, f: impl Fn(&Part, &Tensor) -> Result<Tensor>) -> Result<Tensor> {
        if let [part] = parts {
            return f(part, t);
        }
        let mut start = 0;
        let mut pieces = Vec::with_capacity(parts.len());
        for part in parts {
            pieces.push(f(part, &t.narrow(0, start, part.rows())?)?);
            start += part.rows();
        }
        Tensor::cat(&pieces, 0)
    }
}

/// One post-norm encoder layer on its own (PyTorch's `TransformerEncoderLayer` with ReLU), for
/// fusions that attend across modality tokens. Input and output `[B, L, dim]`.
#[derive(Debug)]
pub struct TransformerEncoderLayer {
    layer: EncoderLayer,
    heads: usize,
    dropout: f64,
}

impl TransformerEncoderLayer {
    /// One layer of width `dim` with `heads` heads (errs unless they divide `dim`), a
    /// feed-forward block of width `ff_dim` and dropout probability `dropout`; PyTorch's names
    /// under `pb` (`self_attn.in_proj_weight`, `self_attn.out_proj.weight`, `linear1.weight`,
    /// `norm1.weight`, ...) and initialisation.
    pub fn new(pb: &ParamBuilder, dim: usize, heads: usize, ff_dim: usize, dropout: f64) -> Result<Self> {
        if heads == 0 || !dim.is_multiple_of(heads) {
            candle_core::bail!("transformer width {dim} is not divisible by {heads} heads");
        }
        let cfg = TransformerConfig { in_features: dim, dim, heads, layers: 1, ff_dim, dropout };
        Ok(Self { layer: EncoderLayer::new(pb, &cfg, None)?, heads, dropout })
    }

    /// `x [B, L, dim]` to `[B, L, dim]`; in training mode (`train`) the four dropout sites draw
    /// from seeds mixed from `dropout_seed`.
    pub fn forward_t(&self, x: &Tensor, train: bool, dropout_seed: u64) -> Result<Tensor> {
        let s = |j: u64| agm_kernels::mix_seed(dropout_seed, j);
        self.layer.forward_t(x, self.heads, self.dropout, train, [s(0), s(1), s(2), s(3)])
    }
}

/// Input `[B, L, in_features]` (batch first) → the encoder output at the first time step
/// `[B, dim]`. No positional encoding and no padding mask, as in the reference.
#[derive(Debug)]
pub struct Transformer {
    conv: Var,
    layers: Vec<EncoderLayer>,
    cfg: TransformerConfig,
}

impl Transformer {
    /// The encoder of `cfg` under `pb` (`conv.weight`, `transformer.layers.{i}.*`): every layer
    /// starts as a copy of the first, as PyTorch's deep copy does. Errs when `heads` does not
    /// divide `dim` or `layers` is 0.
    pub fn new(pb: &ParamBuilder, cfg: &TransformerConfig) -> Result<Self> {
        if cfg.heads == 0 || !cfg.dim.is_multiple_of(cfg.heads) {
            candle_core::bail!("transformer width {} is not divisible by {} heads", cfg.dim, cfg.heads);
        }
        if cfg.layers == 0 {
            candle_core::bail!("a transformer needs at least one layer");
        }
        // Conv1d default init: U(±1/√fan_in) with fan_in = in_features · kernel 1.
        let bound = 1.0 / (cfg.in_features as f64).sqrt();
        let conv = pb.pp("conv").param((cfg.dim, cfg.in_features, 1), "weight", ParamInit::Uniform { bound })?;
        let lpb = pb.pp("transformer").pp("layers");
        let first = EncoderLayer::new(&lpb.pp("0"), cfg, None)?;
        let mut layers = Vec::with_capacity(cfg.layers);
        for i in 1..cfg.layers {
            let layer = EncoderLayer::new(&lpb.pp(i.to_string()), cfg, Some(&first))?;
            layers.push(layer);
        }
        layers.insert(0, first);
        Ok(Self { conv, layers, cfg: *cfg })
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &TransformerConfig {
        &self.cfg
    }

    /// `x [B, L, in_features]` to the output at the first time step, `[B, dim]`; dropout in
    /// training mode (`train`) draws from `dropout_seed`. Errs when the last dimension is not
    /// `in_features`.
    pub fn forward_t(&self, x: &Tensor, train: bool, dropout_seed: u64) -> Result<Tensor> {
        Ok(self.forward_parts(&[(x, train)], dropout_seed)?.remove(0))
    }

    /// The first-step features `[B, dim]` of each input `[B, L, in_features]` (in training mode
    /// or not), from one pass over all their tokens ([`EncoderLayer::forward_parts`]); each
    /// equals [`Self::forward_t`] of that input alone with the same seed.
    fn forward_parts(&self, inputs: &[(&Tensor, bool)], dropout_seed: u64) -> Result<Vec<Tensor>> {
        let mut parts = Vec::with_capacity(inputs.len());
        let mut rows = Vec::with_capacity(inputs.len());
        for (x, train) in inputs {
            let (b, l, f) = x.dims3()?;
            if f != self.cfg.in_features {
                candle_core::bail!("transformer expects {} features per step, got {f}", self.cfg.in_features);
            }
            parts.push(Part { batch: b, len: l, train: *train });
            rows.push(x.reshape((b * l, f))?);
        }
        let x = if rows.len() == 1 { rows.remove(0) } else { Tensor::cat(&rows, 0)? };
        // A kernel-1 Conv1d is a bias-free linear map applied at every time step.
        let w = self.conv.as_tensor().squeeze(2)?;
        let mut h = rowwise_linear(&x, &w, None)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let s = |j: u64| agm_kernels::mix_seed(dropout_seed, 4 * i as u64 + j);
            h = layer.forward_parts(&h, &parts, self.cfg.heads, self.cfg.dropout, [s(0), s(1), s(2), s(3)])?;
        }
        let mut start = 0;
        let mut out = Vec::with_capacity(parts.len());
        for part in &parts {
            // The first time step of each sequence.
            let tokens = h.narrow(0, start, part.rows())?.reshape((part.batch, part.len, self.cfg.dim))?;
            out.push(tokens.narrow(1, 0, 1)?.squeeze(1)?);
            start += part.rows();
        }
        Ok(out)
    }

    /// One zero step of `features` features: see [`Encoder::zero_feature`] below.
    fn zero_step(&self, sample_shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        let features = *sample_shape.last().unwrap_or(&self.cfg.in_features);
        Tensor::zeros((1, 1, features), dtype, device)
    }
}

impl Encoder for Transformer {
    /// A zero sequence is the same zero token at every step, and without positional encoding or
    /// a padding mask each step then attends uniformly to identical keys: every step, the first
    /// included, equals the output for a sequence of length one. So one step is computed.
    fn zero_feature(&self, sample_shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        self.forward_t(&self.zero_step(sample_shape, dtype, device)?, false, 0)
    }

    /// The zero step rides along with the batch's tokens in evaluation mode, so every weight
    /// gets one gradient product instead of two and an addition.
    fn forward_with_zero_feature(&self, x: &Tensor, train: bool, dropout_seed: u64) -> Result<(Tensor, Tensor)> {
        let zero = self.zero_step(&x.dims()[1..], x.dtype(), x.device())?;
        let mut out = self.forward_parts(&[(x, train), (&zero, false)], dropout_seed)?;
        let zero_feature = out.pop().expect("two parts");
        Ok((out.pop().expect("two parts"), zero_feature))
    }

    /// The evaluation sequences (and the zero step) ride along with the training batch's tokens,
    /// each attending within its own part; only the leading part takes dropout.
    fn forward_train_then_eval(
        &self,
        x: &Tensor,
        dropout_seed: u64,
        eval_x: &Tensor,
        with_zero: bool,
    ) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let zero =
            with_zero.then(|| self.zero_step(&eval_x.dims()[1..], eval_x.dtype(), eval_x.device())).transpose()?;
        let mut parts = vec![(x, true), (eval_x, false)];
        parts.extend(zero.as_ref().map(|z| (z, false)));
        let mut out = self.forward_parts(&parts, dropout_seed)?.into_iter();
        let (features, eval) = (out.next().expect("the training part"), out.next().expect("the evaluation part"));
        Ok((features, eval, out.next()))
    }

    fn forward_t(&self, x: &Tensor, train: bool, dropout_seed: u64) -> Result<Tensor> {
        Transformer::forward_t(self, x, train, dropout_seed)
    }

    fn out_dim(&self) -> usize {
        self.cfg.dim
    }

    fn mode_dependent(&self) -> bool {
        self.cfg.dropout > 0.0
    }
}
