//! The reference's `MaxOut_MLP(num_outputs, first_hidden, num_input_feats, second_hidden,
//! linear_layer=False)`: the early-fusion block over concatenated features.
//!
//! Variable names follow the reference (`bn1`, `maxout1.fc`, `module1.0`, `maxout2.fc`,
//! `module2.0`) so a PyTorch checkpoint loads by name.

use candle_core::{Result, Tensor, D};

use crate::{dropout, BatchNorm, Encoder, Linear, ParamBuilder};

/// The reference's dropout probability after each maxout block.
const DROPOUT: f64 = 0.3;

/// `Maxout(d, m, k=2)`: `Linear(d, 2m)` viewed as `[..., m, 2]`, max over each consecutive pair.
#[derive(Clone, Debug)]
struct Maxout {
    fc: Linear,
    out_dim: usize,
}

impl Maxout {
    fn new(pb: &ParamBuilder, in_dim: usize, out_dim: usize) -> Result<Self> {
        Ok(Self { fc: Linear::new(&pb.pp("fc"), in_dim, 2 * out_dim, true)?, out_dim })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.fc.forward(x)?;
        let mut dims = y.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = self.out_dim;
        }
        dims.push(2);
        y.reshape(dims)?.max(D::Minus1)
    }
}

/// `BatchNorm1d(in, eps 1e-4) → Maxout(in → first, 2) → BatchNorm1d(first) → Dropout(0.3) →
/// Maxout(first → second, 2) → BatchNorm1d(second) → Dropout(0.3)`: `[B, in]` → `[B, second]`.
#[derive(Debug)]
pub struct MaxOutMlp {
    bn1: BatchNorm,
    maxout1: Maxout,
    bn_mid: BatchNorm,
    maxout2: Maxout,
    bn_out: BatchNorm,
    out_dim: usize,
}

impl MaxOutMlp {
    /// `in_features → first_hidden → second_hidden` (the reference's 1024 → 2048 → 1024 for two
    /// 512-d encoders).
    pub fn new(pb: &ParamBuilder, in_features: usize, first_hidden: usize, second_hidden: usize) -> Result<Self> {
        Ok(Self {
            bn1: BatchNorm::new(&pb.pp("bn1"), in_features, 1e-4)?,
            maxout1: Maxout::new(&pb.pp("maxout1"), in_features, first_hidden)?,
            bn_mid: BatchNorm::new(&pb.pp("module1").pp("0"), first_hidden, 1e-5)?,
            maxout2: Maxout::new(&pb.pp("maxout2"), first_hidden, second_hidden)?,
            bn_out: BatchNorm::new(&pb.pp("module2").pp("0"), second_hidden, 1e-5)?,
            out_dim: second_hidden,
        })
    }

    /// The output width, `second_hidden`.
    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    /// `x [B, in_features]` → `[B, second_hidden]`; the two dropouts draw from
    /// `dropout_seed` and `dropout_seed + 1`.
    pub fn forward_t(&self, x: &Tensor, train: bool, dropout_seed: u64) -> Result<Tensor> {
        let h = self.maxout1.forward(&self.bn1.forward_t(x, train)?)?;
        let h = dropout(&self.bn_mid.forward_t(&h, train)?, DROPOUT, train, dropout_seed)?;
        let h = self.maxout2.forward(&h)?;
        dropout(&self.bn_out.forward_t(&h, train)?, DROPOUT, train, dropout_seed.wrapping_add(1))
    }
}

impl Encoder for MaxOutMlp {
    fn forward_t(&self, x: &Tensor, train: bool, dropout_seed: u64) -> Result<Tensor> {
        MaxOutMlp::forward_t(self, x, train, dropout_seed)
    }

    fn out_dim(&self) -> usize {
        self.out_dim
    }

    fn mode_dependent(&self) -> bool {
        true
    }
}
