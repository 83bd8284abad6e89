//! Fusions: how per-modality features become logits.
//!
//! A fusion sees one feature `[B, d_m]` per modality, so every fusion works with every encoder,
//! every modulator and any number of modalities.

use candle_core::{Result, Tensor, D};

use crate::{Linear, MaxOutMlp, ParamBuilder, ParamRole};

/// What a fusion returns: logits and the fused feature the competition metric regresses from.
#[derive(Clone, Debug)]
pub struct FusionOutput {
    /// Logits `[B, classes]`.
    pub logits: Tensor,
    /// The fused feature `[B, d]`: the classifier's input, or for [`FusionKind::LateSum`], which
    /// has one classifier per modality, the concatenated features.
    pub fused: Tensor,
}

/// Features to logits.
pub trait Fusion: Send + Sync {
    /// The logits (and the fused feature) from one feature per modality, in the model's
    /// modality order. `dropout_seed` seeds this pass's dropout masks.
    fn forward_t(&self, features: &[Tensor], train: bool, dropout_seed: u64) -> Result<FusionOutput>;

    /// Whether training and evaluation mode differ (batch norm, dropout in the fusion).
    fn mode_dependent(&self) -> bool {
        false
    }

    /// The per-modality logits whose sum is the fusion's logits, for a fusion that sums one head
    /// per modality; `None` for every other fusion.
    fn modality_logits(&self, _features: &[Tensor]) -> Result<Option<Vec<Tensor>>> {
        Ok(None)
    }
}

/// The fusions agm builds by name.
#[derive(Clone, Debug, PartialEq)]
pub enum FusionKind {
    /// `Linear(Σ d_m, K)` on the concatenated features (the reference's AGM late fusion).
    LateConcat,
    /// One `Linear(d_m, K)` per modality, logits summed (the reference's non-AGM late fusion).
    /// Each head belongs to its modality's parameter group.
    LateSum,
    /// Concatenated features through the reference's MaxOut MLP, then `Linear(second, K)`.
    Early {
        /// Width of the first maxout block.
        first_hidden: usize,
        /// Width of the second maxout block, the classifier's input.
        second_hidden: usize,
    },
    /// FiLM: modality 0's feature scaled and shifted by the others,
    /// `f_0 ⊙ (1 + Σ γ_m(f_m)) + Σ β_m(f_m)`, then `Linear(d_0, K)`.
    Film,
    /// Gated multimodal unit: `h_m = tanh(W_m f_m)`, softmax gates over modalities from the
    /// concatenated features, `Σ z_m h_m`, then `Linear(dim, K)`.
    Gated {
        /// Width of the projected features and of the fused feature.
        dim: usize,
    },
    /// Cross-modal attention (MulT-style) over modality tokens: each feature projected to `dim`
    /// plus a learned modality embedding, one post-norm transformer layer in which every token
    /// attends to every modality, tokens concatenated, then `Linear(M·dim, K)`.
    CrossModal {
        /// Token width; the layer's feed-forward block is `2·dim` wide, its dropout 0.1.
        dim: usize,
        /// Attention heads; must divide `dim`.
        heads: usize,
    },
}

impl FusionKind {
    /// Builds the fusion under `pb` with the reference's names: `head.fc` (classifier),
    /// `{modality}_cls` (late sum heads), `mm_encoder` (early fusion's MaxOut MLP); the fusions
    /// the reference lacks live under `fusion`.
    pub fn build(
        &self,
        pb: &ParamBuilder,
        modalities: &[String],
        dims: &[usize],
        classes: usize,
    ) -> Result<Box<dyn Fusion>> {
        self.build_with_head(pb, modalities, dims, classes, "head.fc")
    }

    /// [`FusionKind::build`] with the classifier under `head_path` (CREMA-D's reference names
    /// its late concat classifier `fusion_module.fc_out`, its uni-modal one `cls.fc`).
    pub fn build_with_head(
        &self,
        pb: &ParamBuilder,
        modalities: &[String],
        dims: &[usize],
        classes: usize,
        head_path: &str,
    ) -> Result<Box<dyn Fusion>> {
        let shared = pb.with_role(ParamRole::Shared);
        let head_pb = shared.pp(head_path);
        let fusion_pb = shared.pp("fusion");
        let total: usize = dims.iter().sum();
        Ok(match *self {
            FusionKind::LateConcat => Box::new(LateConcat { fc: head(&head_pb, total, classes)? }),
            FusionKind::LateSum => {
                let heads = dims
                    .iter()
                    .enumerate()
                    .map(|(m, &d)| {
                        let pb = pb.pp(format!("{}_cls", modalities[m])).with_role(ParamRole::Modality(m));
                        if m == 0 {
                            pb.store().set_head_weight(&pb.path("weight"));
                        }
                        Linear::new(&pb, d, classes, true)
                    })
                    .collect::<Result<_>>()?;
                Box::new(LateSum { heads })
            }
            FusionKind::Early { first_hidden, second_hidden } => Box::new(Early {
                mlp: MaxOutMlp::new(&shared.pp("mm_encoder"), total, first_hidden, second_hidden)?,
                fc: head(&head_pb, second_hidden, classes)?,
            }),
            FusionKind::Film => {
                if dims.len() < 2 {
                    candle_core::bail!("FiLM fusion needs at least two modalities");
                }
                let mut gamma = Vec::new();
                let mut beta = Vec::new();
                for (m, &d) in dims.iter().enumerate().skip(1) {
                    gamma.push(Linear::new(&fusion_pb.pp(format!("film{m}")).pp("gamma"), d, dims[0], true)?);
                    beta.push(Linear::new(&fusion_pb.pp(format!("film{m}")).pp("beta"), d, dims[0], true)?);
                }
                Box::new(Film { gamma, beta, fc: head(&head_pb, dims[0], classes)? })
            }
            FusionKind::Gated { dim } => Box::new(Gated {
                proj: dims
                    .iter()
                    .enumerate()
                    .map(|(m, &d)| Linear::new(&fusion_pb.pp(format!("proj{m}")), d, dim, true))
                    .collect::<Result<_>>()?,
                gate: Linear::new(&fusion_pb.pp("gate"), total, dims.len(), true)?,
                fc: head(&head_pb, dim, classes)?,
            }),
            FusionKind::CrossModal { dim, heads } => {
                let proj = dims
                    .iter()
                    .enumerate()
                    .map(|(m, &d)| Linear::new(&fusion_pb.pp(format!("proj{m}")), d, dim, true))
                    .collect::<Result<_>>()?;
                let embed = fusion_pb.param(
                    (dims.len(), dim),
                    "modality_embed",
                    crate::ParamInit::Normal { mean: 0.0, std: 0.02 },
                )?;
                let layer = crate::TransformerEncoderLayer::new(&fusion_pb.pp("layer"), dim, heads, 2 * dim, 0.1)?;
                Box::new(CrossModal { proj, embed, layer, fc: head(&head_pb, dims.len() * dim, classes)? })
            }
        })
    }
}

/// The classifier `head.fc`: its weight is the one the reference's conditional clipping reads.
fn head(pb: &ParamBuilder, in_dim: usize, classes: usize) -> Result<Linear> {
    pb.store().set_head_weight(&pb.path("weight"));
    Linear::new(pb, in_dim, classes, true)
}

struct LateConcat {
    fc: Linear,
}

impl Fusion for LateConcat {
    fn forward_t(&self, features: &[Tensor], _train: bool, _seed: u64) -> Result<FusionOutput> {
        let fused = Tensor::cat(features, 1)?;
        Ok(FusionOutput { logits: self.fc.forward(&fused)?, fused })
    }
}

struct LateSum {
    heads: Vec<Linear>,
}

impl LateSum {
    fn head_logits(&self, features: &[Tensor]) -> Result<Vec<Tensor>> {
        self.heads.iter().zip(features).map(|(h, f)| h.forward(f)).collect()
    }
}

impl Fusion for LateSum {
    fn forward_t(&self, features: &[Tensor], _train: bool, _seed: u64) -> Result<FusionOutput> {
        let per_modality = self.head_logits(features)?;
        let logits = per_modality.iter().skip(1).try_fold(per_modality[0].clone(), |sum, l| sum + l)?;
        Ok(FusionOutput { logits, fused: Tensor::cat(features, 1)? })
    }

    fn modality_logits(&self, features: &[Tensor]) -> Result<Option<Vec<Tensor>>> {
        self.head_logits(features).map(Some)
    }
}

struct Early {
    mlp: MaxOutMlp,
    fc: Linear,
}

impl Fusion for Early {
    fn forward_t(&self, features: &[Tensor], train: bool, seed: u64) -> Result<FusionOutput> {
        let fused = self.mlp.forward_t(&Tensor::cat(features, 1)?, train, seed)?;
        Ok(FusionOutput { logits: self.fc.forward(&fused)?, fused })
    }

    fn mode_dependent(&self) -> bool {
        true
    }
}

struct Film {
    gamma: Vec<Linear>,
    beta: Vec<Linear>,
    fc: Linear,
}

impl Fusion for Film {
    fn forward_t(&self, features: &[Tensor], _train: bool, _seed: u64) -> Result<FusionOutput> {
        let mut scale = features[0].ones_like()?;
        let mut shift = features[0].zeros_like()?;
        for ((g, b), f) in self.gamma.iter().zip(&self.beta).zip(&features[1..]) {
            scale = (scale + g.forward(f)?)?;
            shift = (shift + b.forward(f)?)?;
        }
        let fused = ((&features[0] * scale)? + shift)?;
        Ok(FusionOutput { logits: self.fc.forward(&fused)?, fused })
    }
}

struct Gated {
    proj: Vec<Linear>,
    gate: Linear,
    fc: Linear,
}

impl Fusion for Gated {
    fn forward_t(&self, features: &[Tensor], _train: bool, _seed: u64) -> Result<FusionOutput> {
        let gates = agm_kernels::softmax_last_dim(&self.gate.forward(&Tensor::cat(features, 1)?)?)?;
        let mut fused: Option<Tensor> = None;
        for (m, (p, f)) in self.proj.iter().zip(features).enumerate() {
            let term = p.forward(f)?.tanh()?.broadcast_mul(&gates.narrow(1, m, 1)?)?;
            fused = Some(match fused {
                None => term,
                Some(acc) => (acc + term)?,
            });
        }
        let fused = fused.expect("at least one modality");
        Ok(FusionOutput { logits: self.fc.forward(&fused)?, fused })
    }
}

struct CrossModal {
    proj: Vec<Linear>,
    embed: candle_core::Var,
    layer: crate::TransformerEncoderLayer,
    fc: Linear,
}

impl Fusion for CrossModal {
    fn forward_t(&self, features: &[Tensor], train: bool, seed: u64) -> Result<FusionOutput> {
        let tokens =
            self.proj.iter().zip(features).map(|(p, f)| p.forward(f)?.unsqueeze(1)).collect::<Result<Vec<_>>>()?;
        let tokens = Tensor::cat(&tokens, 1)?.broadcast_add(&self.embed.as_tensor().unsqueeze(0)?)?;
        let out = self.layer.forward_t(&tokens, train, seed)?;
        let fused = out.flatten_from(D::Minus2)?;
        Ok(FusionOutput { logits: self.fc.forward(&fused)?, fused })
    }

    fn mode_dependent(&self) -> bool {
        true
    }
}
