//! DGL, disentangled gradient learning ("Boosting Multimodal Learning via Disentangled Gradient
//! Learning", ICCV 2025, arXiv 2507.10213), as a [`Modulator`] with its own backward, following
//! the official code (`shicaiwei123/ICCV2025-GDL`, commit `b72a55f`: `main_dgl.py::train_epoch`
//! with the fusion `models/fusion_modules.py::ConcatFusion_DGL` of `AVClassifier_DGL`).
//!
//! # One step
//!
//! With `h_m` the encoder features of the full training pass ([`agm_core::ModelOutput`]'s
//! `encoder_features`) and `fuse` the model's fusion ([`MultimodalModel::fuse`]):
//!
//! - fused loss `L_f = CE(fuse(h_1, …, h_M), y)`, the full pass's logits; its gradient trains
//!   **only the fusion** (official: `fc_out(cat(a, v).detach())`);
//! - uni-modal losses `L_m = CE(fuse(0, …, h_m, …, 0), y)`: the model's own fusion with every
//!   other modality's *feature* (not input) set to zero. For late concat this is
//!   `W_m h_m + b`, the official `fc_out(cat(a, zeros_like(v)))`: the uni-modal heads are the
//!   fusion head itself, not heads of their own (the official `fc_auxi` is never used). Their
//!   gradient `α · ∇ Σ_m L_m` trains **only the encoders** (official: after
//!   `(L_a + L_v)·α` is differentiated, every parameter under `fusion_module` gets
//!   `grad = None`);
//! - so every encoder variable gets `α · ∇ Σ_m L_m` and every fusion variable `∇ L_f`; then the
//!   global gradient norm is clipped to `max_grad_norm` (official: `clip_grad_norm_(…, 40)`
//!   every step), and the optimizer steps.
//!
//! The fusion's variables are the trainable ones [`MultimodalModel::fuse`] reaches, found once
//! when the method is built by differentiating the fusion over zero features; every other
//! trainable variable belongs to an encoder. A late-sum model's per-modality heads are therefore
//! fusion variables (trained by `L_f` only), as the official `SumFusion_DGL`'s `fc_x`, `fc_y`.
//!
//! Two backward passes run per step: `α Σ_m L_m`, and `L_f` from the full pass's logits (whose
//! encoder gradients are dropped: the same fusion gradients as the official detached features,
//! at the cost of one more backward through the encoders). The uni-modal fusion passes run in
//! evaluation mode, stacked into one call, so a fusion's batch norm statistics are updated by
//! the full pass alone; for fusions without batch norm or dropout (every official one) this is
//! the official training-mode call.
//!
//! # Where this differs from the official code
//!
//! - **Any `M ≥ 2`** (the official code has two modalities): one uni-modal loss per modality,
//!   summed and weighted by `α`.
//! - **Every fusion** gets its uni-modal logits by zeroing the other features. For concat this
//!   is the official rule; the official sum fusion omits the other head's bias
//!   (`fc_x(x)` where agm gives `fc_x(x) + b_y`), and the official FiLM and gated fusions use
//!   ad-hoc uni-modal paths (`FiLM(x, x)`, `fc_out(σ(fc_x x) · fc_x x)`).
//! - Clipping is agm's [`ClipRule`] with threshold 0: it runs whenever the head weight's
//!   gradient has a non-zero element (every step in practice); the official code clips
//!   unconditionally. `max_grad_norm = 0` turns it off.
//! - A model's auxiliary loss ([`MultimodalModel::aux_loss`]) is not differentiated; the models
//!   that have one (AVE, MOSEI) have no separate fusion and cannot run DGL.
//!
//! The model must factor into encoders and a fusion ([`MultimodalModel::fuse`] returns logits):
//! every `FusionModel` does, the AVE and MOSEI nets do not, and building DGL for them fails.

use std::collections::HashSet;

use agm_core::{MultimodalModel, NamedVar};
use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, TensorId};
use serde::{Deserialize, Serialize};

use crate::shared::{model_dtype_device, require_two, scalar_f64};
use crate::{ClipRule, MethodError, Modulator, Objective, StepCx};

/// DGL settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default = "DglConfig::official")]
pub struct DglConfig {
    /// Weight `α` of the summed uni-modal losses; > 0 (official `--alpha`).
    pub alpha: f64,
    /// Global gradient norm clipped to every step; 0 turns clipping off (official: 40).
    pub max_grad_norm: f64,
}

impl Default for DglConfig {
    fn default() -> Self {
        Self::official()
    }
}

impl DglConfig {
    /// The official defaults: `--alpha 4` (the argument default and the first CREMA-D line of
    /// `cramed_dgl.sh`, reported at 77.48 %), clipping at 40.
    pub fn official() -> Self {
        Self { alpha: 4.0, max_grad_norm: 40.0 }
    }

    /// CREMA-D as the official run script (`cramed_dgl.sh`: `--alpha 4`, lr 0.002, SGD momentum
    /// 0.9, weight decay 1e-4, batch 64).
    pub fn paper_cremad() -> Self {
        Self::official()
    }

    /// The preset names [`DglConfig::preset`] accepts.
    pub const PRESETS: &'static [&'static str] = &["official", "cremad"];

    /// The preset called `name` (one of [`DglConfig::PRESETS`]); `None` for any other name.
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "official" => Some(Self::official()),
            "cremad" => Some(Self::paper_cremad()),
            _ => None,
        }
    }

    /// Checks every field; the error names the field and the allowed values.
    pub fn validate(&self) -> std::result::Result<(), MethodError> {
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(format!("dgl.alpha must be a finite number > 0, got {}", self.alpha).into());
        }
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm >= 0.0) {
            return Err(format!(
                "dgl.max_grad_norm must be a finite number >= 0 (0: no clipping), got {}",
                self.max_grad_norm
            )
            .into());
        }
        Ok(())
    }
}

/// The losses of the last step (logs and parity; DGL carries no state between steps).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DglStepStats {
    /// `L_f = CE(T, y)`.
    #[serde(with = "agm_core::serde_f64")]
    pub fusion_loss: f64,
    /// `L_m` for every modality, in model order.
    #[serde(with = "agm_core::serde_f64::seq")]
    pub unimodal_losses: Vec<f64>,
}

/// Disentangled gradient learning (see the module docs).
#[derive(Debug)]
pub struct Dgl {
    cfg: DglConfig,
    m: usize,
    /// The trainable variables the fusion reaches.
    fusion_vars: HashSet<TensorId>,
    /// `[L_f, α Σ_m L_m]` of the current step, for its backward.
    pending: Option<[Tensor; 2]>,
    last: Option<DglStepStats>,
}

impl Dgl {
    /// DGL for `model`, whose encoders give features of sizes `feature_dims`.
    pub fn new(
        cfg: DglConfig,
        model: &dyn MultimodalModel,
        feature_dims: &[usize],
    ) -> std::result::Result<Self, MethodError> {
        cfg.validate()?;
        let m = model.modalities().len();
        require_two("dgl", m)?;
        if feature_dims.len() != m {
            return Err(
                format!("dgl: {} encoder feature sizes for a model with {m} modalities", feature_dims.len()).into()
            );
        }
        let fusion_vars = fusion_vars(model, feature_dims)?;
        Ok(Self { cfg, m, fusion_vars, pending: None, last: None })
    }

    /// The settings it was built with.
    pub fn config(&self) -> &DglConfig {
        &self.cfg
    }

    /// The fused and uni-modal losses of the last step; `None` before the first.
    pub fn last_stats(&self) -> Option<&DglStepStats> {
        self.last.as_ref()
    }

    /// Whether `var` belongs to the fusion (trained by the fused loss only).
    pub fn is_fusion_var(&self, var: &NamedVar) -> bool {
        self.fusion_vars.contains(&var.var.as_tensor().id())
    }
}

/// The trainable variables the model's fusion reaches: those the gradient of its logits over
/// zero features (one row, evaluation mode) touches.
fn fusion_vars(model: &dyn MultimodalModel, dims: &[usize]) -> std::result::Result<HashSet<TensorId>, MethodError> {
    let fault = |e: candle_core::Error| MethodError::from(format!("dgl: cannot run the model's fusion alone: {e}"));
    let (dtype, device) = model_dtype_device(model).map_err(fault)?;
    let zeros =
        dims.iter().map(|&d| Tensor::zeros((1, d), dtype, &device)).collect::<Result<Vec<_>>>().map_err(fault)?;
    let logits = model.fuse(&zeros, false, 0).map_err(fault)?.ok_or_else(|| {
        MethodError::from(
            "method = `dgl` needs a model that factors into encoders and a fusion (MultimodalModel::fuse); \
             this model does not (the AVE and MOSEI nets), use a fusion model preset",
        )
    })?;
    let grads = agm_kernels::backward(&logits.sum_all().map_err(fault)?).map_err(fault)?;
    let ids: HashSet<TensorId> = model
        .param_groups()
        .trainable()
        .iter()
        .map(|v| v.var.as_tensor())
        .filter(|t| grads.get(t).is_some())
        .map(Tensor::id)
        .collect();
    if ids.is_empty() {
        return Err("method = `dgl` trains the fusion with the fused loss alone, but this model's fusion has no \
                    trainable variables"
            .into());
    }
    Ok(ids)
}

/// The uni-modal logits `fuse(0, …, h_m, …, 0)` of every modality, from one fusion call over the
/// `M` zero-padded feature sets stacked along the batch (evaluation mode).
pub fn unimodal_logits(model: &dyn MultimodalModel, features: &[Tensor]) -> Result<Vec<Tensor>> {
    let m = features.len();
    let b = features.first().map(|f| f.dim(0)).transpose()?.unwrap_or(0);
    let stacked = features
        .iter()
        .enumerate()
        .map(|(j, h)| {
            let zeros = h.zeros_like()?;
            let parts: Vec<&Tensor> = (0..m).map(|x| if x == j { h } else { &zeros }).collect();
            Tensor::cat(&parts, 0)
        })
        .collect::<Result<Vec<_>>>()?;
    let logits = model.fuse(&stacked, false, 0)?.ok_or_else(|| {
        candle_core::Error::Msg("dgl: the model cannot run its fusion alone (MultimodalModel::fuse)".into())
    })?;
    (0..m).map(|x| logits.narrow(0, x * b, b)).collect()
}

impl Modulator for Dgl {
    fn name(&self) -> &'static str {
        "dgl"
    }

    fn objective(&mut self, cx: &StepCx<'_>) -> Result<Objective> {
        let full = &cx.forward.full;
        let labels = &cx.batch.labels;
        if full.encoder_features.len() != self.m {
            candle_core::bail!(
                "dgl: the model returned {} encoder features for {} modalities",
                full.encoder_features.len(),
                self.m
            );
        }
        let fused = candle_nn::loss::cross_entropy(&full.logits, labels)?;
        let uni = unimodal_logits(cx.model, &full.encoder_features)?;
        let losses = uni.iter().map(|u| candle_nn::loss::cross_entropy(u, labels)).collect::<Result<Vec<_>>>()?;
        let sum = losses.iter().skip(1).try_fold(losses[0].clone(), |a, l| a + l)?;
        let weighted = sum.affine(self.cfg.alpha, 0.0)?;
        self.last = Some(DglStepStats {
            fusion_loss: scalar_f64(&fused)?,
            unimodal_losses: losses.iter().map(scalar_f64).collect::<Result<_>>()?,
        });
        let loss = (&fused + &weighted)?;
        self.pending = Some([fused, weighted]);
        Ok(Objective { loss, output: full.logits.clone(), mono: Some(uni.iter().map(Tensor::detach).collect()) })
    }

    /// `∇ L_f` for the fusion's variables, `α ∇ Σ_m L_m` for every other trainable variable.
    fn backward(&mut self, cx: &StepCx<'_>, _objective: &Objective) -> Result<GradStore> {
        let [fused, weighted] = self
            .pending
            .take()
            .ok_or_else(|| candle_core::Error::Msg("dgl: backward without its objective in the same step".into()))?;
        let g_uni = agm_kernels::backward(&weighted)?;
        let g_fused = agm_kernels::backward(&fused)?;
        let mut out = GradStore::default();
        for v in cx.model.param_groups().trainable() {
            let t = v.var.as_tensor();
            let from = if self.fusion_vars.contains(&t.id()) { &g_fused } else { &g_uni };
            if let Some(g) = from.get(t) {
                out.insert(t, g.clone());
            }
        }
        Ok(out)
    }

    fn clip_rule(&self) -> Option<ClipRule> {
        (self.cfg.max_grad_norm > 0.0).then(|| ClipRule::outside_band(0.0, self.cfg.max_grad_norm))
    }

    fn state(&self) -> serde_json::Value {
        serde_json::to_value(self.last.clone().unwrap_or_default()).expect("plain numbers serialize")
    }

    fn load_state(&mut self, state: &serde_json::Value) -> Result<()> {
        let s: DglStepStats = serde_json::from_value(state.clone())
            .map_err(|e| candle_core::Error::Msg(format!("dgl state in checkpoint: {e}")))?;
        if !s.unimodal_losses.is_empty() && s.unimodal_losses.len() != self.m {
            candle_core::bail!("dgl state in checkpoint is not for {} modalities", self.m);
        }
        self.last = (!s.unimodal_losses.is_empty()).then_some(s);
        Ok(())
    }
}

impl crate::Method for Dgl {
    const NAME: &'static str = "dgl";
    const HOOKS: crate::Hooks = crate::Hooks::OBJECTIVE_AND_BACKWARD;
    type Config = DglConfig;

    fn preset(dataset: &str) -> DglConfig {
        match dataset {
            "cremad" => DglConfig::paper_cremad(),
            _ => DglConfig::official(),
        }
    }

    fn validate(config: &DglConfig) -> std::result::Result<(), MethodError> {
        config.validate()
    }

    fn build(config: &DglConfig, cx: &crate::BuildCx<'_>) -> std::result::Result<Self, MethodError> {
        require_two("dgl", cx.modalities())?;
        Dgl::new(config.clone(), cx.model, &cx.feature_dims(Self::NAME)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agm_core::{ForwardOpts, ModalitySet, ModelOutput, MultimodalBatch, ParamGroups};
    use agm_fusion::{EncoderLayer, EncoderSpec, FusionKind, FusionModel, LateConcatConfig};
    use candle_core::{DType, Device, Var};

    use crate::{Method, StepForward};

    const B: usize = 5;
    const K: usize = 3;
    const DIMS: [usize; 3] = [4, 3, 5];
    const H: usize = 6;

    fn model(m: usize, fusion: &FusionKind) -> FusionModel {
        let encoders = (0..m)
            .map(|x| EncoderSpec {
                modality: ["audio", "visual", "text"][x].into(),
                layers: vec![EncoderLayer::Linear { in_dim: DIMS[x], out_dim: H }, EncoderLayer::Relu],
            })
            .collect();
        let cfg = LateConcatConfig { encoders, num_classes: K, prefix: "net".into() };
        FusionModel::sequential(&cfg, fusion, 3, DType::F64, &Device::Cpu).unwrap()
    }

    fn batch(m: usize) -> MultimodalBatch {
        let inputs = (0..m)
            .map(|x| {
                let v: Vec<f64> = (0..B * DIMS[x]).map(|i| ((i * 7 + x * 3) % 11) as f64 / 4.0 - 1.0).collect();
                Tensor::from_vec(v, (B, DIMS[x]), &Device::Cpu).unwrap()
            })
            .collect();
        let labels: Vec<u32> = (0..B).map(|i| (i % K) as u32).collect();
        MultimodalBatch::new(inputs, Tensor::new(labels.as_slice(), &Device::Cpu).unwrap()).unwrap()
    }

    fn dgl(cfg: DglConfig, model: &dyn MultimodalModel) -> Dgl {
        Dgl::new(cfg, model, &vec![H; model.modalities().len()]).unwrap()
    }

    /// DGL's gradients for one batch, by variable name.
    fn grads(model: &dyn MultimodalModel, method: &mut Dgl, batch: &MultimodalBatch) -> Vec<(String, Tensor)> {
        let m = model.modalities().len();
        let full = model.forward(&batch.inputs, &ForwardOpts::train(m, 0)).unwrap();
        let fwd = StepForward { full, masked: Vec::new() };
        let cx = StepCx { model, batch, forward: &fwd, step: 1, epoch: 1 };
        let objective = method.objective(&cx).unwrap();
        let store = method.backward(&cx, &objective).unwrap();
        model
            .param_groups()
            .trainable()
            .into_iter()
            .map(|v| {
                let g = store.get(v.var.as_tensor()).unwrap_or_else(|| panic!("{} has no gradient", v.name)).clone();
                (v.name, g)
            })
            .collect()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap()
    }

    fn var(model: &FusionModel, name: &str) -> Var {
        model.param_groups().find(name).unwrap_or_else(|| panic!("no `{name}`")).var.clone()
    }

    /// The defining equations on late concat, written out with the head's blocks:
    /// encoders get `α ∇ Σ_m CE(h_m W_mᵀ + b)` (head constant), the head `∇ CE(cat(h) Wᵀ + b)`
    /// (features constant).
    #[test]
    fn late_concat_encoders_learn_from_the_head_blocks_and_the_head_from_the_fused_loss() {
        for m in [2, 3] {
            let net = model(m, &FusionKind::LateConcat);
            let b = batch(m);
            let alpha = 2.5;
            let mut method = dgl(DglConfig { alpha, max_grad_norm: 40.0 }, &net);
            let got = grads(&net, &mut method, &b);

            let w = var(&net, "net.head.fc.weight");
            let bias = var(&net, "net.head.fc.bias");
            let feats = net.forward(&b.inputs, &ForwardOpts::train(m, 0)).unwrap().encoder_features;
            // Encoders: the head as constants.
            let (wc, bc) = (w.as_tensor().detach(), bias.as_tensor().detach());
            let mut uni = Vec::new();
            for (x, h) in feats.iter().enumerate() {
                let block = wc.narrow(1, x * H, H).unwrap();
                let logits = h.matmul(&block.t().unwrap()).unwrap().broadcast_add(&bc).unwrap();
                uni.push(candle_nn::loss::cross_entropy(&logits, &b.labels).unwrap());
            }
            let total = uni.iter().skip(1).fold(uni[0].clone(), |a, l| (a + l).unwrap()).affine(alpha, 0.0).unwrap();
            let want_enc = total.backward().unwrap();
            // Head: the features as constants.
            let cat = Tensor::cat(&feats.iter().map(Tensor::detach).collect::<Vec<_>>(), 1).unwrap();
            let fused = cat.matmul(&w.as_tensor().t().unwrap()).unwrap().broadcast_add(bias.as_tensor()).unwrap();
            let want_head = candle_nn::loss::cross_entropy(&fused, &b.labels).unwrap().backward().unwrap();

            let groups = net.param_groups();
            for (name, g) in &got {
                let v = groups.find(name).unwrap();
                let want = if name.starts_with("net.head") { &want_head } else { &want_enc };
                let want = want.get(v.var.as_tensor()).unwrap();
                assert!(max_diff(g, want) < 1e-12, "M = {m}, {name}: {}", max_diff(g, want));
            }
            assert!(!method.is_fusion_var(groups.per_modality[0].first().unwrap()));
            assert!(method.is_fusion_var(groups.shared.first().unwrap()));
            let stats = method.last_stats().unwrap();
            assert_eq!(stats.unimodal_losses.len(), m);
            for (l, u) in stats.unimodal_losses.iter().zip(&uni) {
                assert!((l - scalar_f64(u).unwrap()).abs() < 1e-12);
            }
        }
    }

    /// A zero feature is not the feature of a zero input: the uni-modal logits zero the other
    /// features after their encoders.
    #[test]
    fn the_unimodal_logits_zero_the_other_features_not_their_inputs() {
        let net = model(2, &FusionKind::LateConcat);
        let b = batch(2);
        let full = net.forward(&b.inputs, &ForwardOpts::eval(2)).unwrap();
        let uni = unimodal_logits(&net, &full.encoder_features).unwrap();
        let zero_feature =
            net.fuse(&[full.encoder_features[0].clone(), full.encoder_features[1].zeros_like().unwrap()], false, 0);
        assert_eq!(max_diff(&uni[0], &zero_feature.unwrap().unwrap()), 0.0);
        let masked = net.forward(&b.inputs, &ForwardOpts::eval(2).with_present(agm_core::Subset::single(0))).unwrap();
        assert!(max_diff(&uni[0], &masked.logits) > 1e-6, "the encoder bias makes them differ");
    }

    /// Late sum's heads sit in the modality groups, yet they are the fusion: the fused loss alone
    /// trains them, as the official `SumFusion_DGL`'s `fc_x`, `fc_y`.
    #[test]
    fn late_sum_heads_are_fusion_variables_trained_by_the_fused_loss() {
        let net = model(2, &FusionKind::LateSum);
        let b = batch(2);
        let mut method = dgl(DglConfig::official(), &net);
        let got = grads(&net, &mut method, &b);
        let full = net.forward(&b.inputs, &ForwardOpts::train(2, 0)).unwrap();
        let want = candle_nn::loss::cross_entropy(&full.logits, &b.labels).unwrap().backward().unwrap();
        let groups = net.param_groups();
        let mut heads = 0;
        for (name, g) in &got {
            let v = groups.find(name).unwrap();
            if name.contains("_cls") {
                heads += 1;
                assert!(method.is_fusion_var(v), "{name}");
                assert_eq!(max_diff(g, want.get(v.var.as_tensor()).unwrap()), 0.0, "{name}");
            } else {
                assert!(!method.is_fusion_var(v), "{name}");
                assert!(max_diff(g, want.get(v.var.as_tensor()).unwrap()) > 1e-9, "{name}");
            }
        }
        assert_eq!(heads, 4);
    }

    #[test]
    fn alpha_scales_only_the_encoder_gradients() {
        let b = batch(3);
        let run = |alpha: f64| {
            let net = model(3, &FusionKind::Gated { dim: 4 });
            let mut method = dgl(DglConfig { alpha, max_grad_norm: 0.0 }, &net);
            assert_eq!(method.clip_rule(), None);
            let fusion: Vec<bool> = net.param_groups().trainable().iter().map(|v| method.is_fusion_var(v)).collect();
            (grads(&net, &mut method, &b), fusion)
        };
        let ((one, fusion), (three, _)) = (run(1.0), run(3.0));
        for (((name, a), (_, c)), is_fusion) in one.iter().zip(&three).zip(fusion) {
            let scaled = if is_fusion { a.clone() } else { a.affine(3.0, 0.0).unwrap() };
            assert!(max_diff(&scaled, c) < 1e-12, "{name}");
        }
    }

    /// A model without a separate fusion.
    struct NoFusion(FusionModel);

    impl MultimodalModel for NoFusion {
        fn modalities(&self) -> &ModalitySet {
            self.0.modalities()
        }
        fn num_classes(&self) -> usize {
            self.0.num_classes()
        }
        fn forward(&self, inputs: &[Tensor], opts: &ForwardOpts) -> Result<ModelOutput> {
            self.0.forward(inputs, opts)
        }
        fn param_groups(&self) -> ParamGroups {
            self.0.param_groups()
        }
    }

    #[test]
    fn settings_and_models_dgl_cannot_use_are_rejected_with_the_reason() {
        for (cfg, field) in [
            (DglConfig { alpha: 0.0, ..DglConfig::official() }, "dgl.alpha"),
            (DglConfig { alpha: f64::NAN, ..DglConfig::official() }, "dgl.alpha"),
            (DglConfig { max_grad_norm: -1.0, ..DglConfig::official() }, "dgl.max_grad_norm"),
        ] {
            assert!(cfg.validate().unwrap_err().to_string().contains(field), "{cfg:?}");
        }
        let net = NoFusion(model(2, &FusionKind::LateConcat));
        let err = Dgl::new(DglConfig::official(), &net, &[H, H]).unwrap_err().to_string();
        assert!(err.contains("MultimodalModel::fuse"), "{err}");
        let one = model(1, &FusionKind::LateConcat);
        let err = Dgl::new(DglConfig::official(), &one, &[H]).unwrap_err().to_string();
        assert!(err.contains("at least 2 modalities"), "{err}");
        let two = model(2, &FusionKind::LateConcat);
        let err = <Dgl as Method>::build(&DglConfig::official(), &crate::BuildCx::new(&two, 0)).unwrap_err();
        assert!(err.to_string().contains("feature sizes"), "{err}");
        let toml: DglConfig = toml::from_str("alpha = 2.0").unwrap();
        assert_eq!(toml, DglConfig { alpha: 2.0, max_grad_norm: 40.0 });
        assert!(toml::from_str::<DglConfig>("beta = 1.0").is_err());
        assert_eq!(DglConfig::preset("cremad"), Some(DglConfig::paper_cremad()));
    }

    #[test]
    fn the_state_round_trips_and_checks_the_modalities() {
        let net = model(2, &FusionKind::LateConcat);
        let mut method = dgl(DglConfig::official(), &net);
        grads(&net, &mut method, &batch(2));
        let state = method.state();
        assert!(state["fusion_loss"].as_f64().unwrap() > 0.0);
        let mut other = dgl(DglConfig::official(), &net);
        other.load_state(&state).unwrap();
        assert_eq!(other.last_stats(), method.last_stats());
        let three = model(3, &FusionKind::LateConcat);
        assert!(dgl(DglConfig::official(), &three).load_state(&state).is_err());
    }
}
