//! Diagnosing & Re-learning (Wei, Li, Feng and Hu, "Diagnosing and Re-learning for Balanced
//! Multimodal Learning", ECCV 2024) as a [`Modulator`], following the official code
//! (GeWu-Lab/Diagnosing_Relearning_ECCV2024, commit 025085e, `code/ours.py`: `reinit_score`,
//! `purity_score`, `reinit` and the epoch loop of `main`).
//!
//! Training steps are plain cross-entropy steps; the method acts only at epoch ends.
//!
//! # When (`main`)
//!
//! The official loop re-learns after its 0-based epoch `e` when `e % reinit_epoch == 0` and
//! `e > 0`, at most `reinit_num` times. In agm's 1-based epochs `E = e + 1`: after epochs
//! `E = 1 + j · reinit_every` for `j = 1, …, max_reinits` (the official settings, 20 and 3,
//! give epochs 21, 41 and 61). A pure function of the epoch, so a resumed run re-learns when the
//! uninterrupted one would.
//!
//! # Diagnosing (`reinit_score`, `purity_score`)
//!
//! For every modality `k`, the encoder features (`ModelOutput::encoder_features[k]`, flattened;
//! the full pass in evaluation mode, no gradients) of the whole training split
//! ([`EpochCx::train`], `Φ_D`) and of the whole held-out split ([`EpochCx::holdout`], `Φ_V`; the
//! official `val` split) are each
//!
//! 1. scaled column by column to `[−1, 1]` with their own minimum and maximum (scikit-learn's
//!    `MinMaxScaler(feature_range=(-1, 1))`: `x · s + (−1 − min · s)`, `s = 2 / (max − min)`, a
//!    range below `10 · f64::EPSILON` counting as 1, so a constant column becomes −1);
//! 2. clustered by k-means into `C` clusters, `C` the number of classes (`KMeans(n_clusters =
//!    n_classes)`), see below;
//! 3. scored by the purity `P = (1/N) · Σ_clusters max_class |cluster ∩ class|`.
//!
//! The re-initialisation strength is `α_k = tanh(λ · |P_D^k − P_V^k|)`: a modality whose
//! representation separates the training data much better (or worse) than unseen data is
//! re-initialised more.
//!
//! # Re-learning (`reinit`)
//!
//! Every trainable variable of modality `k`'s encoder (`ParamGroups::per_modality[k]`, the
//! official `named_parameters()` of `audio_net` / `visual_net`; buffers such as BatchNorm running
//! statistics are not parameters and stay) becomes `θ ← α_k · θ_init + (1 − α_k) · θ`, in place.
//! The fusion and head variables are untouched, and so is the optimizer state (the official code
//! assigns `param.data`, which keeps the momentum buffers).
//!
//! `θ_init` is the encoder at the start of training (the official `init_para.pkl`, saved right
//! after the model is built). The copies are taken in [`Modulator::attach`] and handed to the
//! trainer as method variables (`relearn.init.<variable name>`): they never receive a gradient,
//! so no optimizer moves them, and the trainer writes them into every checkpoint as tensors and
//! restores them on resume. They are not kept in the JSON [`Modulator::state`]: the paper's
//! CREMA-D encoders (two ResNet-18s, about 22 M values) would not fit a safetensors header
//! (at most 100 MB).
//!
//! # k-means
//!
//! Lloyd's algorithm as scikit-learn runs it (`_kmeans_single_lloyd`, scikit-learn 1.9): data
//! and centres centred on the column means; squared distances as `‖c‖² − 2·x·c` (ties: the
//! lowest cluster); at most 300 iterations; stop when the labels repeat (strict convergence) or
//! when `Σ_j ‖c_j,new − c_j,old‖² ≤ 1e-4 · mean column variance`, in which case the labels are
//! recomputed from the final centres. An empty cluster takes the sample farthest from its own
//! centre (several empty clusters: the farthest ones in decreasing distance, ties by the lowest
//! index; scikit-learn's `argpartition` leaves that order unspecified), which leaves the cluster
//! it came from; if every sample sits on its centre (fewer distinct points than clusters) the
//! empty cluster takes the largest cluster's centre.
//!
//! **The one deviation from the official code.** `KMeans(random_state=0)` starts from
//! scikit-learn's random k-means++ seeding, which cannot be reproduced outside scikit-learn. Here
//! the initial centres are deterministic farthest-first ("maximin") points: the sample farthest
//! from the mean, then repeatedly the sample farthest from its nearest chosen centre (ties: the
//! lowest sample index). Purity depends on the initialisation only through which local optimum
//! k-means reaches; the golden case gives scikit-learn's Lloyd iterations exactly these initial
//! centres.
//!
//! # Modalities and splits
//!
//! The rule is per modality, so it holds for any `M ≥ 2` (the official script is written for
//! audio and visual; the paper applies the method to three modalities as well). `M < 2` is
//! rejected like the other balancing methods. The diagnosis needs a held-out split disjoint from
//! the training data ([`EpochCx::holdout`]; in agm's datasets, AV-Digits' `dep` split): a run
//! without one fails at its first epoch end, naming the fix. Labels must be one per sample.
//!
//! **Model selection.** The trainer scores the validation split, keeps the best weights and
//! measures the epoch before `on_epoch_end`, so a re-learning epoch's best weights are the ones
//! it was scored with, as the official script saves its best model before `reinit`.

use crate::MethodError;
use agm_core::{BatchSource, ForwardOpts, MultimodalModel, NamedVar};
use candle_core::{DType, Device, Result, Var};
use serde::{Deserialize, Serialize};

use crate::shared::{labels_u32, require_two};
use crate::{EpochAction, EpochCx, Modulator};

/// scikit-learn's default `max_iter` of `KMeans`.
pub const KMEANS_MAX_ITER: usize = 300;
/// scikit-learn's default relative `tol` of `KMeans`.
pub const KMEANS_TOL: f64 = 1e-4;

/// Diagnosing & Re-learning settings. Missing keys in a config file take the official values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default = "RelearnConfig::official")]
pub struct RelearnConfig {
    /// `λ` of the strength `tanh(λ · |P_train − P_holdout|)` (official `--move_lambda`); finite,
    /// ≥ 0.
    pub lambda: f64,
    /// Epochs between re-learnings (official `--reinit_epoch`): after 1-based epochs
    /// `1 + j · reinit_every`; ≥ 1.
    pub reinit_every: usize,
    /// How many re-learnings at most (official `--reinit_num`); 0 turns the method off.
    pub max_reinits: usize,
    /// Batch size of the feature passes.
    pub eval_batch_size: usize,
}

impl Default for RelearnConfig {
    fn default() -> Self {
        Self::official()
    }
}

impl RelearnConfig {
    /// The official run script (`script/ours.sh`, CREMA-D, 90 epochs): λ 3, every 20 epochs, 3
    /// times.
    pub fn official() -> Self {
        Self { lambda: 3.0, reinit_every: 20, max_reinits: 3, eval_batch_size: 256 }
    }

    /// The preset names [`RelearnConfig::preset`] accepts.
    pub const PRESETS: &'static [&'static str] = &["official"];

    /// The preset called `name` (one of [`RelearnConfig::PRESETS`]); `None` for any other name.
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "official" => Some(Self::official()),
            _ => None,
        }
    }

    /// The 1-based epoch after which the method first re-learns; `None` when it never does
    /// (`max_reinits` 0).
    pub fn first_reinit(&self) -> Option<usize> {
        (self.max_reinits > 0).then(|| 1 + self.reinit_every)
    }

    /// Whether the method re-learns after 1-based epoch `epoch`.
    pub fn due(&self, epoch: usize) -> bool {
        if epoch < 2 || self.reinit_every == 0 {
            return false;
        }
        let e = epoch - 1;
        e.is_multiple_of(self.reinit_every) && e / self.reinit_every <= self.max_reinits
    }

    /// Checks every field; the error names the field and the allowed values.
    pub fn validate(&self) -> std::result::Result<(), MethodError> {
        if !(self.lambda.is_finite() && self.lambda >= 0.0) {
            return Err(format!("relearn.lambda must be a finite number >= 0, got {}", self.lambda).into());
        }
        if self.reinit_every == 0 {
            return Err("relearn.reinit_every must be >= 1, got 0".into());
        }
        if self.eval_batch_size == 0 {
            return Err("relearn.eval_batch_size must be >= 1, got 0".into());
        }
        Ok(())
    }
}

/// `tanh(λ · |p_train − p_holdout|)`, the re-initialisation strength of one modality.
pub fn relearn_strength(lambda: f64, purity_train: f64, purity_holdout: f64) -> f64 {
    (lambda * (purity_train - purity_holdout).abs()).tanh()
}

/// One diagnosis: per-modality purities and strengths, in modality order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RelearnDiagnosis {
    /// 1-based epoch after which it was made.
    pub diagnosed_epoch: usize,
    /// `P_D`: the purity of each modality's k-means clusters on the training split, in `[0, 1]`.
    #[serde(with = "agm_core::serde_f64::seq")]
    pub purity_train: Vec<f64>,
    /// `P_V`: the purity on the held-out split, in `[0, 1]`.
    #[serde(with = "agm_core::serde_f64::seq")]
    pub purity_holdout: Vec<f64>,
    /// `α_k`, applied right after the diagnosis.
    #[serde(with = "agm_core::serde_f64::seq")]
    pub strength: Vec<f64>,
}

/// The checkpointed state (the initial encoder copies travel as method variables).
#[derive(Serialize, Deserialize)]
struct RelearnState {
    reinits: usize,
    #[serde(flatten)]
    last: Option<RelearnDiagnosis>,
}

/// An encoder variable and its copy from the start of training.
#[derive(Debug)]
struct InitCopy {
    live: Var,
    init: Var,
}

/// Diagnosing & Re-learning (see the module docs).
#[derive(Debug)]
pub struct Relearn {
    cfg: RelearnConfig,
    m: usize,
    /// Per modality, every encoder variable with its initial copy; set by `attach`.
    init: Option<Vec<Vec<InitCopy>>>,
    reinits: usize,
    last: Option<RelearnDiagnosis>,
}

impl Relearn {
    /// Diagnosing & Re-learning over `m` modalities (at least 2).
    pub fn new(cfg: RelearnConfig, m: usize) -> std::result::Result<Self, MethodError> {
        cfg.validate()?;
        require_two("relearn", m)?;
        Ok(Self { cfg, m, init: None, reinits: 0, last: None })
    }

    /// The settings it was built with.
    pub fn config(&self) -> &RelearnConfig {
        &self.cfg
    }

    /// Re-learnings done so far.
    pub fn reinits(&self) -> usize {
        self.reinits
    }

    /// The last diagnosis; `None` before the first re-learning.
    pub fn last_diagnosis(&self) -> Option<&RelearnDiagnosis> {
        self.last.as_ref()
    }

    /// Purity of every modality's encoder features on `split`.
    fn purities(&self, model: &dyn MultimodalModel, split: &dyn BatchSource, device: &Device) -> Result<Vec<f64>> {
        let classes = model.num_classes();
        let SplitFeatures { features, dims, labels } =
            encoder_features(model, split, self.cfg.eval_batch_size, device)?;
        let n = labels.len();
        if n < classes {
            candle_core::bail!(
                "relearn: a split of {n} samples cannot be clustered into {classes} clusters (one per class)"
            );
        }
        features
            .into_iter()
            .zip(dims)
            .map(|(mut x, d)| {
                min_max_scale(&mut x, n, d);
                let assign = kmeans(&x, n, d, classes);
                Ok(purity(&assign, &labels, classes))
            })
            .collect()
    }

    /// `θ ← α·θ_init + (1 − α)·θ` for every encoder variable of every modality.
    fn reinit(&self, strength: &[f64]) -> Result<()> {
        let init = self.init.as_ref().ok_or_else(not_attached)?;
        for (copies, &a) in init.iter().zip(strength) {
            for c in copies {
                let blended = (c.init.as_tensor().affine(a, 0.0)? + c.live.as_tensor().affine(1.0 - a, 0.0)?)?;
                c.live.set(&blended)?;
            }
        }
        Ok(())
    }
}

fn not_attached() -> candle_core::Error {
    candle_core::Error::Msg("relearn: the method was not attached to the model (Modulator::attach)".into())
}

/// Every modality's encoder features of a whole split.
struct SplitFeatures {
    /// Per modality, `n × dims[m]` row-major f64.
    features: Vec<Vec<f64>>,
    dims: Vec<usize>,
    labels: Vec<u32>,
}

/// Every modality's flattened encoder features of the whole split (evaluation mode) and the
/// per-sample labels.
fn encoder_features(
    model: &dyn MultimodalModel,
    split: &dyn BatchSource,
    batch_size: usize,
    device: &Device,
) -> Result<SplitFeatures> {
    let m = model.modalities().len();
    let n = split.len();
    let mut features: Vec<Vec<f64>> = vec![Vec::new(); m];
    let mut dims = vec![0usize; m];
    let mut labels = Vec::with_capacity(n);
    let indices: Vec<usize> = (0..n).collect();
    for chunk in indices.chunks(batch_size.max(1)) {
        let batch = split.batch(chunk, device)?;
        let out = model.forward(&batch.inputs, &ForwardOpts::eval(m))?;
        let y = labels_u32(&batch)?;
        if y.len() != chunk.len() {
            candle_core::bail!(
                "relearn: {} labels for {} samples; the diagnosis needs one label per sample",
                y.len(),
                chunk.len()
            );
        }
        for (x, f) in out.encoder_features.iter().enumerate() {
            let f = f.detach().flatten_from(1)?.to_dtype(DType::F64)?;
            dims[x] = f.dim(1)?;
            features[x].extend(f.flatten_all()?.to_vec1::<f64>()?);
        }
        labels.extend(y);
    }
    Ok(SplitFeatures { features, dims, labels })
}

/// Scales every column of `x` (`n × d`, row-major) to `[−1, 1]` as scikit-learn's
/// `MinMaxScaler(feature_range=(-1, 1))`.
pub fn min_max_scale(x: &mut [f64], n: usize, d: usize) {
    for j in 0..d {
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for i in 0..n {
            lo = lo.min(x[i * d + j]);
            hi = hi.max(x[i * d + j]);
        }
        let range = hi - lo;
        let range = if range < 10.0 * f64::EPSILON { 1.0 } else { range };
        let scale = 2.0 / range;
        let shift = -1.0 - lo * scale;
        for i in 0..n {
            let v = &mut x[i * d + j];
            *v = *v * scale + shift;
        }
    }
}

fn sq_dist(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Index of the largest value, the lowest on ties.
fn argmax_first(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// The farthest-first initial centres (sample indices) of `x` (`n × d`): the sample farthest
/// from the mean, then repeatedly the one farthest from its nearest chosen centre.
pub fn farthest_first(x: &[f64], n: usize, d: usize, k: usize) -> Vec<usize> {
    let mut mean = vec![0.0; d];
    for row in x.chunks(d) {
        for (m, v) in mean.iter_mut().zip(row) {
            *m += v;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    let d0: Vec<f64> = x.chunks(d).map(|r| sq_dist(r, &mean)).collect();
    let mut chosen = vec![argmax_first(&d0)];
    let first = &x[chosen[0] * d..(chosen[0] + 1) * d];
    let mut nearest: Vec<f64> = x.chunks(d).map(|r| sq_dist(r, first)).collect();
    while chosen.len() < k {
        let i = argmax_first(&nearest);
        chosen.push(i);
        let c = &x[i * d..(i + 1) * d];
        for (near, r) in nearest.iter_mut().zip(x.chunks(d)) {
            *near = near.min(sq_dist(r, c));
        }
    }
    chosen
}

/// Nearest centre of every row by `‖c‖² − 2·x·c` (ties: the lowest centre).
fn assign(x: &[f64], d: usize, centres: &[f64], out: &mut [usize]) {
    let norms: Vec<f64> = centres.chunks(d).map(|c| c.iter().map(|v| v * v).sum()).collect();
    for (row, label) in x.chunks(d).zip(out.iter_mut()) {
        let mut best = (0usize, f64::INFINITY);
        for (j, c) in centres.chunks(d).enumerate() {
            let dot: f64 = row.iter().zip(c).map(|(a, b)| a * b).sum();
            let dist = norms[j] - 2.0 * dot;
            if j == 0 || dist < best.1 {
                best = (j, dist);
            }
        }
        *label = best.0;
    }
}

/// k-means cluster of every row of `x` (`n × d`, row-major, `n ≥ k ≥ 1`): farthest-first
/// initial centres, then scikit-learn's Lloyd iterations (see the module docs).
pub fn kmeans(x: &[f64], n: usize, d: usize, k: usize) -> Vec<usize> {
    assert!(k >= 1 && n >= k && x.len() == n * d, "kmeans: need n >= k >= 1 and an n × d matrix");
    // Centre the data on its column means (scikit-learn does, for accuracy).
    let mut mean = vec![0.0; d];
    for row in x.chunks(d) {
        for (m, v) in mean.iter_mut().zip(row) {
            *m += v;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    let xc: Vec<f64> = x.chunks(d).flat_map(|r| r.iter().zip(&mean).map(|(v, m)| v - m)).collect();
    let variance: f64 =
        (0..d).map(|j| (0..n).map(|i| (x[i * d + j] - mean[j]).powi(2)).sum::<f64>() / n as f64).sum::<f64>()
            / d.max(1) as f64;
    let tol = variance * KMEANS_TOL;

    // The initial centres are chosen on the data as given, then centred like the data.
    let mut centres: Vec<f64> =
        farthest_first(x, n, d, k).iter().flat_map(|&i| xc[i * d..(i + 1) * d].to_vec()).collect();
    let mut labels = vec![usize::MAX; n];
    let mut old = vec![usize::MAX; n];
    let mut strict = false;
    for _ in 0..KMEANS_MAX_ITER {
        assign(&xc, d, &centres, &mut labels);
        let mut sums = vec![0.0; k * d];
        let mut weight = vec![0.0; k];
        for (row, &l) in xc.chunks(d).zip(&labels) {
            weight[l] += 1.0;
            for (s, v) in sums[l * d..(l + 1) * d].iter_mut().zip(row) {
                *s += v;
            }
        }
        let empty: Vec<usize> = (0..k).filter(|&j| weight[j] == 0.0).collect();
        if !empty.is_empty() {
            let dist: Vec<f64> =
                xc.chunks(d).zip(&labels).map(|(r, &l)| sq_dist(r, &centres[l * d..(l + 1) * d])).collect();
            if dist.iter().any(|&v| v > 0.0) {
                let mut far: Vec<usize> = (0..n).collect();
                far.sort_by(|&a, &b| dist[b].total_cmp(&dist[a]).then(a.cmp(&b)));
                for (&j, &f) in empty.iter().zip(&far) {
                    let from = labels[f];
                    for t in 0..d {
                        sums[from * d + t] -= xc[f * d + t];
                        sums[j * d + t] = xc[f * d + t];
                    }
                    weight[j] = 1.0;
                    weight[from] -= 1.0;
                }
            }
        }
        let biggest = argmax_first(&weight);
        for j in 0..k {
            if weight[j] > 0.0 {
                let alpha = 1.0 / weight[j];
                sums[j * d..(j + 1) * d].iter_mut().for_each(|v| *v *= alpha);
            }
        }
        for j in 0..k {
            if weight[j] <= 0.0 {
                let src: Vec<f64> = sums[biggest * d..(biggest + 1) * d].to_vec();
                sums[j * d..(j + 1) * d].copy_from_slice(&src);
            }
        }
        let shift: f64 = sums.chunks(d).zip(centres.chunks(d)).map(|(a, b)| sq_dist(a, b)).sum();
        centres = sums;
        if labels == old {
            strict = true;
            break;
        }
        if shift <= tol {
            break;
        }
        old.clone_from(&labels);
    }
    if !strict {
        assign(&xc, d, &centres, &mut labels);
    }
    labels
}

/// Clustering purity: the fraction of samples whose class is the majority class of their
/// cluster (`Σ_clusters max_class count / N`).
pub fn purity(clusters: &[usize], labels: &[u32], classes: usize) -> f64 {
    let k = clusters.iter().copied().max().map_or(0, |c| c + 1);
    let top = labels.iter().map(|&y| y as usize + 1).max().unwrap_or(0).max(classes);
    let mut counts = vec![0usize; k * top];
    for (&c, &y) in clusters.iter().zip(labels) {
        counts[c * top + y as usize] += 1;
    }
    let majority: usize = counts.chunks(top.max(1)).map(|c| c.iter().copied().max().unwrap_or(0)).sum();
    majority as f64 / labels.len().max(1) as f64
}

impl Modulator for Relearn {
    fn name(&self) -> &'static str {
        "relearn"
    }

    fn attach(&mut self, model: &dyn MultimodalModel) -> Result<Vec<NamedVar>> {
        let groups = model.param_groups();
        if groups.per_modality.len() != self.m {
            candle_core::bail!(
                "relearn was built for {} modalities, the model has {}",
                self.m,
                groups.per_modality.len()
            );
        }
        let mut init = Vec::with_capacity(self.m);
        let mut named = Vec::new();
        for vars in &groups.per_modality {
            let mut copies = Vec::with_capacity(vars.len());
            for v in vars {
                let copy = Var::from_tensor(&v.var.as_tensor().detach().copy()?)?;
                named.push(NamedVar { name: format!("relearn.init.{}", v.name), var: copy.clone() });
                copies.push(InitCopy { live: v.var.clone(), init: copy });
            }
            init.push(copies);
        }
        self.init = Some(init);
        Ok(named)
    }

    fn on_epoch_end(&mut self, cx: &EpochCx<'_>) -> Result<Vec<EpochAction>> {
        let holdout = cx.holdout.ok_or_else(|| {
            crate::shared::no_holdout(
                "relearn",
                "diagnoses each modality by the purity gap between the training split and a held-out split",
            )
        })?;
        if cx.model.modalities().len() != self.m {
            candle_core::bail!(
                "relearn was built for {} modalities, the model has {}",
                self.m,
                cx.model.modalities().len()
            );
        }
        if !self.cfg.due(cx.epoch) {
            return Ok(Vec::new());
        }
        let purity_train = self.purities(cx.model, cx.train, cx.device)?;
        let purity_holdout = self.purities(cx.model, holdout, cx.device)?;
        let strength: Vec<f64> =
            purity_train.iter().zip(&purity_holdout).map(|(&t, &h)| relearn_strength(self.cfg.lambda, t, h)).collect();
        self.reinit(&strength)?;
        self.reinits += 1;
        tracing::info!(epoch = cx.epoch, ?purity_train, ?purity_holdout, ?strength, "relearn: encoders re-initialised");
        let modalities = cx.model.modalities();
        let each: Vec<String> =
            strength.iter().enumerate().map(|(x, s)| format!("{} {s:.3}", modalities.name(x))).collect();
        let note = format!("relearn: encoders re-initialised by strength {}", each.join(", "));
        self.last = Some(RelearnDiagnosis { diagnosed_epoch: cx.epoch, purity_train, purity_holdout, strength });
        Ok(vec![EpochAction::Note(note)])
    }

    fn state(&self) -> serde_json::Value {
        serde_json::to_value(RelearnState { reinits: self.reinits, last: self.last.clone() })
            .expect("plain numbers serialize")
    }

    fn load_state(&mut self, state: &serde_json::Value) -> Result<()> {
        let s: RelearnState = serde_json::from_value(state.clone())
            .map_err(|e| candle_core::Error::Msg(format!("relearn state in checkpoint: {e}")))?;
        if let Some(d) = &s.last {
            if d.purity_train.len() != self.m || d.purity_holdout.len() != self.m || d.strength.len() != self.m {
                candle_core::bail!("relearn state in checkpoint is not for {} modalities", self.m);
            }
        }
        self.reinits = s.reinits;
        self.last = s.last;
        Ok(())
    }
}

impl crate::Method for Relearn {
    const NAME: &'static str = "relearn";
    const HOOKS: crate::Hooks = crate::Hooks::EDITS;
    type Config = RelearnConfig;

    /// The official script's settings for every dataset (it gives only CREMA-D's).
    fn preset(_dataset: &str) -> RelearnConfig {
        RelearnConfig::official()
    }

    fn validate(config: &RelearnConfig) -> std::result::Result<(), MethodError> {
        config.validate()
    }

    fn build(config: &RelearnConfig, cx: &crate::BuildCx<'_>) -> std::result::Result<Self, MethodError> {
        let relearn = Relearn::new(config.clone(), cx.modalities())?;
        crate::shared::require_holdout(
            cx,
            "relearn",
            "compares each encoder's k-means purity on the training split and on a held-out split",
        )?;
        if let Some(k) = cx.model.param_groups().per_modality.iter().position(Vec::is_empty) {
            return Err(format!(
                "method = `relearn` re-initialises each modality's encoder, and modality {k} has no trainable encoder \
                 variables"
            )
            .into());
        }
        Ok(relearn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agm_core::MultimodalBatch;
    use agm_fusion::{EncoderLayer, EncoderSpec, FusionModel, LateConcatConfig};
    use candle_core::Tensor;

    /// A split of fixed rows (f64 inputs, one label per sample).
    struct Rows {
        x: Vec<Vec<f64>>,
        dims: Vec<usize>,
        y: Vec<u32>,
    }

    impl Rows {
        fn new(dims: &[usize], n: usize, seed: u64, classes: u32) -> Self {
            let mut s = seed;
            let mut next = move || {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
            };
            let y: Vec<u32> = (0..n as u32).map(|i| i % classes).collect();
            let x = dims
                .iter()
                .map(|&d| {
                    (0..n)
                        .flat_map(|i| (0..d).map(move |j| (i, j)))
                        .map(|(i, j)| next() + (j % 3 == y[i] as usize % 3) as u8 as f64)
                        .collect()
                })
                .collect();
            Self { x, dims: dims.to_vec(), y }
        }
    }

    impl BatchSource for Rows {
        fn len(&self) -> usize {
            self.y.len()
        }
        fn batch(&self, indices: &[usize], device: &Device) -> Result<MultimodalBatch> {
            let inputs = self
                .x
                .iter()
                .zip(&self.dims)
                .map(|(x, &d)| {
                    let rows: Vec<f64> = indices.iter().flat_map(|&i| x[i * d..(i + 1) * d].to_vec()).collect();
                    Tensor::from_vec(rows, (indices.len(), d), device)
                })
                .collect::<Result<_>>()?;
            let y: Vec<u32> = indices.iter().map(|&i| self.y[i]).collect();
            MultimodalBatch::new(inputs, Tensor::from_vec(y, indices.len(), device)?)
        }
    }

    fn model(dims: &[usize], classes: usize) -> FusionModel {
        let encoders = dims
            .iter()
            .enumerate()
            .map(|(i, &d)| EncoderSpec {
                modality: format!("m{i}"),
                layers: vec![EncoderLayer::Linear { in_dim: d, out_dim: 5 }, EncoderLayer::Relu],
            })
            .collect();
        let cfg = LateConcatConfig { encoders, num_classes: classes, prefix: "net".into() };
        FusionModel::late_concat(&cfg, 3, DType::F64, &Device::Cpu).unwrap()
    }

    fn cx<'a>(
        model: &'a dyn MultimodalModel,
        train: &'a dyn BatchSource,
        holdout: Option<&'a dyn BatchSource>,
        epoch: usize,
    ) -> EpochCx<'a> {
        static CPU: Device = Device::Cpu;
        EpochCx {
            model,
            device: &CPU,
            train,
            holdout,
            epoch,
            accuracy: 0.0,
            modality_accuracy: Vec::new(),
            modality_loss: Vec::new(),
            head_accuracy: Vec::new(),
            head_loss: Vec::new(),
        }
    }

    fn values(v: &Var) -> Vec<f64> {
        v.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap()
    }

    #[test]
    fn schedule_is_the_official_one() {
        let due = |cfg: &RelearnConfig| (1..=100).filter(|&e| cfg.due(e)).collect::<Vec<_>>();
        // 0-based epochs 20, 40, 60 of the official loop.
        assert_eq!(due(&RelearnConfig::official()), vec![21, 41, 61]);
        let cfg = RelearnConfig { reinit_every: 1, max_reinits: 2, ..RelearnConfig::official() };
        assert_eq!(due(&cfg), vec![2, 3]);
        assert!(due(&RelearnConfig { max_reinits: 0, ..RelearnConfig::official() }).is_empty());
    }

    #[test]
    fn config_checks_name_the_field() {
        let bad = RelearnConfig { lambda: -1.0, ..RelearnConfig::official() };
        assert!(bad.validate().unwrap_err().to_string().contains("relearn.lambda"));
        let bad = RelearnConfig { reinit_every: 0, ..RelearnConfig::official() };
        assert!(bad.validate().unwrap_err().to_string().contains("relearn.reinit_every"));
        assert!(Relearn::new(RelearnConfig::official(), 1).unwrap_err().to_string().contains("modalities"));
        let parsed: RelearnConfig = toml::from_str("lambda = 2.0").unwrap();
        assert_eq!(parsed, RelearnConfig { lambda: 2.0, ..RelearnConfig::official() });
        assert!(toml::from_str::<RelearnConfig>("lambda_ = 2.0").is_err());
    }

    #[test]
    fn strength_is_tanh_of_lambda_times_the_purity_gap() {
        assert_eq!(relearn_strength(3.0, 0.75, 0.5), (0.75f64).tanh());
        assert_eq!(relearn_strength(3.0, 0.5, 0.75), (0.75f64).tanh());
        assert_eq!(relearn_strength(3.0, 0.6, 0.6), 0.0);
        assert_eq!(relearn_strength(0.0, 1.0, 0.0), 0.0);
    }

    #[test]
    fn min_max_scaling_matches_scikit_learn() {
        // Column 0 spans [0, 9], column 1 is constant (scikit-learn maps it to -1).
        let mut x = vec![0.0, 1.0, 4.5, 1.0, 9.0, 1.0];
        min_max_scale(&mut x, 3, 2);
        assert_eq!(x, vec![-1.0, -1.0, 0.0, -1.0, 1.0, -1.0]);
    }

    #[test]
    fn kmeans_and_purity_match_scikit_learn_on_a_fixed_case() {
        // MinMaxScaler(-1, 1) then KMeans(3, init=<farthest-first>, n_init=1) in scikit-learn
        // 1.9.1: initial samples [5, 0, 4], labels [1,1,1,2,2,0,0,2,1,1], purity 0.7.
        let raw: [[f64; 3]; 10] = [
            [0.0, 1.0, 3.0],
            [0.5, 1.0, 2.0],
            [4.0, 1.0, 2.5],
            [4.5, 1.0, 0.0],
            [1.0, 1.0, -1.0],
            [9.0, 1.0, 1.0],
            [8.0, 1.0, 1.5],
            [0.25, 1.0, 0.75],
            [5.0, 1.0, 5.0],
            [2.0, 1.0, 2.0],
        ];
        let mut x: Vec<f64> = raw.iter().flatten().copied().collect();
        min_max_scale(&mut x, 10, 3);
        assert_eq!(farthest_first(&x, 10, 3, 3), vec![5, 0, 4]);
        let labels = kmeans(&x, 10, 3, 3);
        assert_eq!(labels, vec![1, 1, 1, 2, 2, 0, 0, 2, 1, 1]);
        let y = [0, 0, 1, 1, 0, 2, 2, 0, 1, 0];
        assert!((purity(&labels, &y, 3) - 0.7).abs() < 1e-15);
    }

    #[test]
    fn purity_counts_the_majority_class_of_each_cluster() {
        assert_eq!(purity(&[0, 0, 0, 1, 1, 1], &[0, 0, 1, 1, 1, 2], 3), 4.0 / 6.0);
        // Purity does not depend on how clusters are numbered.
        assert_eq!(purity(&[2, 2, 2, 0, 0, 0], &[0, 0, 1, 1, 1, 2], 3), 4.0 / 6.0);
        assert_eq!(purity(&[0, 1, 2, 3], &[0, 1, 0, 1], 2), 1.0);
    }

    #[test]
    fn kmeans_with_fewer_distinct_points_than_clusters_keeps_equal_points_together() {
        let x: Vec<f64> = [[1.0, 2.0]; 3].iter().chain([[3.0, -1.0]; 4].iter()).flatten().copied().collect();
        let labels = kmeans(&x, 7, 2, 3);
        assert!(labels[..3].iter().all(|&l| l == labels[0]));
        assert!(labels[3..].iter().all(|&l| l == labels[3]));
        assert_ne!(labels[0], labels[3]);
        assert_eq!(purity(&labels, &[0, 0, 0, 1, 1, 1, 1], 2), 1.0);
    }

    #[test]
    fn well_separated_blobs_are_found() {
        let centres = [[5.0, 0.0], [-5.0, 5.0], [0.0, -5.0]];
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..30 {
            let c = i % 3;
            x.push(centres[c][0] + 0.1 * ((i * 7) % 5) as f64);
            x.push(centres[c][1] - 0.1 * ((i * 3) % 4) as f64);
            y.push(c as u32);
        }
        min_max_scale(&mut x, 30, 2);
        assert_eq!(purity(&kmeans(&x, 30, 2, 3), &y, 3), 1.0);
    }

    #[test]
    fn re_learning_blends_every_encoder_variable_towards_its_initial_value() {
        let dims = [3, 4, 2];
        let net = model(&dims, 3);
        let train = Rows::new(&dims, 12, 1, 3);
        let holdout = Rows::new(&dims, 9, 2, 3);
        let cfg = RelearnConfig { lambda: 3.0, reinit_every: 1, max_reinits: 1, eval_batch_size: 5 };
        let mut r = Relearn::new(cfg, 3).unwrap();
        let copies = r.attach(&net).unwrap();
        let groups = net.param_groups();
        assert_eq!(copies.len(), groups.per_modality.iter().map(Vec::len).sum::<usize>());
        assert!(copies.iter().all(|c| c.name.starts_with("relearn.init.net.")));
        let init: Vec<Vec<f64>> = groups.trainable().iter().map(|v| values(&v.var)).collect();
        // Training moves every variable.
        for v in groups.trainable() {
            v.var.set(&v.var.as_tensor().affine(0.5, 0.25).unwrap()).unwrap();
        }
        let before: Vec<Vec<f64>> = groups.trainable().iter().map(|v| values(&v.var)).collect();
        // Epoch 1 is never due: nothing changes.
        assert!(r.on_epoch_end(&cx(&net, &train, Some(&holdout), 1)).unwrap().is_empty());
        assert_eq!(r.reinits(), 0);
        assert!(r.last_diagnosis().is_none());
        let actions = r.on_epoch_end(&cx(&net, &train, Some(&holdout), 2)).unwrap();
        let d = r.last_diagnosis().unwrap().clone();
        // The metrics row says what re-learning did, by modality.
        let [EpochAction::Note(note)] = actions.as_slice() else { panic!("one note: {actions:?}") };
        let names = net.modalities().names().to_vec();
        assert!(
            note.starts_with("relearn: encoders re-initialised by strength ") && note.contains(&names[2]),
            "{note}"
        );
        assert_eq!((r.reinits(), d.diagnosed_epoch), (1, 2));
        for k in 0..3 {
            assert_eq!(d.strength[k], relearn_strength(3.0, d.purity_train[k], d.purity_holdout[k]));
        }
        assert!(d.strength.iter().any(|&a| a > 0.0), "{d:?}");
        let owner: Vec<Option<usize>> = groups.trainable().iter().map(|v| groups.modality_of(&v.name)).collect();
        for (i, v) in groups.trainable().iter().enumerate() {
            let now = values(&v.var);
            match owner[i] {
                Some(k) => {
                    let a = d.strength[k];
                    for ((n, b), i0) in now.iter().zip(&before[i]).zip(&init[i]) {
                        assert!((n - (a * i0 + (1.0 - a) * b)).abs() < 1e-14, "{}", v.name);
                    }
                }
                None => assert_eq!(now, before[i], "{} is not an encoder variable", v.name),
            }
        }
        // The initial copies never move, and epoch 3 is past max_reinits.
        r.on_epoch_end(&cx(&net, &train, Some(&holdout), 3)).unwrap();
        assert_eq!(r.reinits(), 1);
        let flat_init: Vec<f64> =
            init.iter().zip(&owner).filter(|(_, o)| o.is_some()).flat_map(|(v, _)| v.clone()).collect();
        let mut copies_sorted = copies.clone();
        copies_sorted
            .sort_by_key(|c| groups.trainable().iter().position(|v| format!("relearn.init.{}", v.name) == c.name));
        let flat_copies: Vec<f64> = copies_sorted.iter().flat_map(|c| values(&c.var)).collect();
        assert_eq!(flat_copies, flat_init);
    }

    #[test]
    fn state_round_trips_and_a_run_without_holdout_is_refused() {
        let dims = [3, 2];
        let net = model(&dims, 2);
        let train = Rows::new(&dims, 8, 5, 2);
        let holdout = Rows::new(&dims, 6, 6, 2);
        let cfg = RelearnConfig { reinit_every: 2, ..RelearnConfig::official() };
        let mut r = Relearn::new(cfg.clone(), 2).unwrap();
        r.attach(&net).unwrap();
        let err = r.on_epoch_end(&cx(&net, &train, None, 1)).unwrap_err().to_string();
        assert!(err.contains("held-out"), "{err}");
        r.on_epoch_end(&cx(&net, &train, Some(&holdout), 3)).unwrap();
        let state = r.state();
        assert_eq!(state["reinits"], 1);
        assert_eq!(state["diagnosed_epoch"], 3);
        let mut resumed = Relearn::new(cfg, 2).unwrap();
        resumed.load_state(&state).unwrap();
        assert_eq!(resumed.state(), state);
        assert_eq!(resumed.last_diagnosis(), r.last_diagnosis());
        let mut three = Relearn::new(RelearnConfig::official(), 3).unwrap();
        assert!(three.load_state(&state).is_err());
    }

    #[test]
    fn diagnosis_before_attach_is_an_error() {
        let dims = [3, 2];
        let net = model(&dims, 2);
        let train = Rows::new(&dims, 8, 5, 2);
        let mut r = Relearn::new(RelearnConfig { reinit_every: 1, ..RelearnConfig::official() }, 2).unwrap();
        let err = r.on_epoch_end(&cx(&net, &train, Some(&train), 2)).unwrap_err().to_string();
        assert!(err.contains("attach"), "{err}");
    }
}
