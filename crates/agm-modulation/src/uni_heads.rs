//! Linear uni-modal heads a method owns (G-Blending, MMPareto), seeded as agm-fusion seeds a
//! model's variables.

use agm_core::{MultimodalModel, NamedVar};
use candle_core::{Result, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::shared::model_dtype_device;

/// Linear uni-modal heads owned by a method: `head_m(h) = flatten(h) Wᵀ + b`, `W` of shape
/// `[classes, d_m]`, initialised as PyTorch's `nn.Linear` (uniform in `±1/sqrt(d_m)`), each
/// variable from a ChaCha8 stream seeded with `seed ^ FNV-1a(name)`: the values agm-fusion's
/// `ParamBuilder` would give a variable of that name and seed.
#[derive(Clone, Debug)]
pub(crate) struct UniHeads {
    method: &'static str,
    names: Vec<String>,
    heads: Vec<(Var, Var)>,
    dims: Vec<usize>,
}

impl UniHeads {
    /// One head per modality, named `<method>.<modality>_head.{weight,bias}`.
    pub(crate) fn create(method: &'static str, model: &dyn MultimodalModel, dims: &[usize], seed: u64) -> Result<Self> {
        let m = model.modalities().len();
        if dims.len() != m {
            candle_core::bail!("{method}: {} encoder feature sizes given for a model with {m} modalities", dims.len());
        }
        if let Some(i) = dims.iter().position(|&d| d == 0) {
            candle_core::bail!("{method}: the encoder feature size of modality {i} is 0");
        }
        let (dtype, device) = model_dtype_device(model)?;
        let classes = model.num_classes();
        let mut names = Vec::with_capacity(m);
        let mut heads = Vec::with_capacity(m);
        for (x, &d) in dims.iter().enumerate() {
            let base = format!("{method}.{}_head", model.modalities().name(x));
            if names.contains(&base) {
                candle_core::bail!("{method}: two modalities are named `{}`", model.modalities().name(x));
            }
            let bound = 1.0 / (d as f64).sqrt();
            let init = |name: &str, shape: &[usize]| -> Result<Var> {
                let n: usize = shape.iter().product();
                let mut rng = ChaCha8Rng::seed_from_u64(seed ^ agm_core::stable_name_hash(name));
                let values: Vec<f64> = (0..n).map(|_| rng.random_range(-bound..=bound)).collect();
                let t = Tensor::from_vec(values, shape, &device)?.to_dtype(dtype)?;
                Var::from_tensor(&t)
            };
            let w = init(&format!("{base}.weight"), &[classes, d])?;
            let b = init(&format!("{base}.bias"), &[classes])?;
            names.push(base);
            heads.push((w, b));
        }
        Ok(Self { method, names, heads, dims: dims.to_vec() })
    }

    pub(crate) fn named_vars(&self) -> Vec<NamedVar> {
        self.names
            .iter()
            .zip(&self.heads)
            .flat_map(|(n, (w, b))| {
                [
                    NamedVar { name: format!("{n}.weight"), var: w.clone() },
                    NamedVar { name: format!("{n}.bias"), var: b.clone() },
                ]
            })
            .collect()
    }

    /// Logits of modality `x`'s head over its encoder feature.
    pub(crate) fn forward(&self, x: usize, feature: &Tensor) -> Result<Tensor> {
        let h = feature.flatten_from(1)?;
        let d = h.dim(1)?;
        if d != self.dims[x] {
            candle_core::bail!(
                "{}: the head of modality {x} takes {} features but the encoder gives {d} (the feature sizes given \
                 to with_feature_dims do not match the model)",
                self.method,
                self.dims[x]
            );
        }
        let (w, b) = &self.heads[x];
        h.matmul(&w.as_tensor().t()?)?.broadcast_add(b.as_tensor())
    }

    /// Every head's logits over the full pass's encoder features.
    pub(crate) fn forward_all(&self, features: &[Tensor]) -> Result<Vec<Tensor>> {
        if features.len() != self.heads.len() {
            candle_core::bail!(
                "{}: the model returned {} encoder features for {} heads",
                self.method,
                features.len(),
                self.heads.len()
            );
        }
        features.iter().enumerate().map(|(x, f)| self.forward(x, f)).collect()
    }

    pub(crate) fn vars(&self) -> impl Iterator<Item = &Var> {
        self.heads.iter().flat_map(|(w, b)| [w, b])
    }
}
