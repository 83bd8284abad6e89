//! Metrics for agm: fused accuracy and per-modality Shapley accuracy and loss, and the
//! competition strength of each modality ([`competition`]).
//!
//! Metrics are pure: the same outputs and labels give the same numbers.
//!
//! ```
//! # fn main() -> candle_core::Result<()> {
//! use agm_metric::EvalTally;
//! use candle_core::{Device, Tensor};
//! let logits = Tensor::new(&[[2.0f32, 0.0], [0.0, 1.0], [3.0, 0.0]], &Device::Cpu)?;
//! let labels = [0u32, 1, 1];
//! let mut tally = EvalTally::new(&["visual".to_string()]);
//! tally.add(&logits, &[logits.clone()], &labels)?;
//! assert!((tally.report().accuracy - 2.0 / 3.0).abs() < 1e-12);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

use agm_core::by_name::Keyed;
use candle_core::{DType, Result, Tensor, D};
use serde::{Deserialize, Serialize};

pub mod competition;

pub use competition::{competition_strength, CompetitionStrength, Ridge, RidgeSolver, DEFAULT_RIDGE_ALPHA};

/// Row-wise argmax of `[B, C]` logits.
pub fn argmax(logits: &Tensor) -> Result<Vec<u32>> {
    logits.argmax(D::Minus1)?.to_dtype(DType::U32)?.to_vec1::<u32>()
}

/// Number of rows whose argmax equals the label.
pub fn count_correct(logits: &Tensor, labels: &[u32]) -> Result<usize> {
    Ok(argmax(logits)?.iter().zip(labels).filter(|(p, y)| p == y).count())
}

/// Sum over rows of the cross-entropy `−log softmax(logits)[y]`, in f64.
pub fn cross_entropy_sum(logits: &Tensor, labels: &[u32]) -> Result<f64> {
    let lsm = candle_nn_free_log_softmax(&logits.detach().to_dtype(DType::F64)?)?;
    let rows = lsm.to_vec2::<f64>()?;
    Ok(rows.iter().zip(labels).map(|(r, &y)| -r[y as usize]).sum())
}

/// log-softmax over the last dimension from plain ops (keeps this crate off candle-nn).
fn candle_nn_free_log_softmax(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?;
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// Accumulates accuracy (micro: correct samples over all samples) and mean losses over batches.
#[derive(Clone, Debug)]
pub struct EvalTally {
    modalities: Vec<String>,
    samples: usize,
    correct: usize,
    loss_sum: f64,
    modality_correct: Vec<usize>,
    modality_loss_sum: Vec<f64>,
    head_correct: Vec<usize>,
    head_loss_sum: Vec<f64>,
}

/// Evaluation numbers of one split. In files the per-modality values are keyed by modality
/// name (`"modality_accuracy": {"audio": 0.62, "visual": 0.58}`), the names listed in order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(into = "EvalReportFile", try_from = "EvalReportFile")]
pub struct EvalReport {
    /// Number of samples evaluated.
    pub samples: usize,
    /// Micro accuracy of the fused output: correct samples over all samples, in [0, 1].
    pub accuracy: f64,
    /// Mean cross-entropy of the fused output per sample (natural log).
    pub loss: f64,
    /// The model's modality names, in its order (empty in reports of earlier versions).
    pub modalities: Vec<String>,
    /// Accuracy of each modality's Shapley mono-modal output.
    pub modality_accuracy: Vec<f64>,
    /// Mean cross-entropy of each modality's Shapley mono-modal output.
    pub modality_loss: Vec<f64>,
    /// Accuracy of each modality's own head, for models whose fusion sums one head per modality
    /// (`MultimodalModel::modality_logits`, the reference's `_Sum` models); empty otherwise.
    pub head_accuracy: Vec<f64>,
    /// Mean cross-entropy of each modality's own head; empty where `head_accuracy` is.
    pub head_loss: Vec<f64>,
}

impl EvalReport {
    /// The modality names, numbered (`modality 1`, …) where the report has none.
    pub fn modality_names(&self) -> Vec<String> {
        if self.modalities.len() == self.modality_accuracy.len() {
            self.modalities.clone()
        } else {
            (1..=self.modality_accuracy.len()).map(|k| format!("modality {k}")).collect()
        }
    }
}

/// [`EvalReport`] as written to files.
#[derive(Serialize, Deserialize)]
struct EvalReportFile {
    samples: usize,
    #[serde(with = "agm_core::serde_f64")]
    accuracy: f64,
    #[serde(with = "agm_core::serde_f64")]
    loss: f64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    modalities: Vec<String>,
    modality_accuracy: Keyed,
    modality_loss: Keyed,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    head_accuracy: Option<Keyed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    head_loss: Option<Keyed>,
}

impl From<EvalReport> for EvalReportFile {
    fn from(r: EvalReport) -> Self {
        let names = r.modality_names();
        Self {
            samples: r.samples,
            accuracy: r.accuracy,
            loss: r.loss,
            modality_accuracy: Keyed::new(&names, &r.modality_accuracy),
            modality_loss: Keyed::new(&names, &r.modality_loss),
            head_accuracy: (!r.head_accuracy.is_empty()).then(|| Keyed::new(&names, &r.head_accuracy)),
            head_loss: (!r.head_loss.is_empty()).then(|| Keyed::new(&names, &r.head_loss)),
            modalities: names,
        }
    }
}

impl TryFrom<EvalReportFile> for EvalReport {
    type Error = String;
    fn try_from(f: EvalReportFile) -> std::result::Result<Self, String> {
        Ok(Self {
            samples: f.samples,
            accuracy: f.accuracy,
            loss: f.loss,
            modality_accuracy: f.modality_accuracy.values(&f.modalities)?,
            modality_loss: f.modality_loss.values(&f.modalities)?,
            head_accuracy: f.head_accuracy.map_or(Ok(Vec::new()), |k| k.values(&f.modalities))?,
            head_loss: f.head_loss.map_or(Ok(Vec::new()), |k| k.values(&f.modalities))?,
            modalities: f.modalities,
        })
    }
}

impl EvalTally {
    /// A tally for a model with these modalities (in its order).
    pub fn new(modalities: &[String]) -> Self {
        let num_modalities = modalities.len();
        Self {
            modalities: modalities.to_vec(),
            samples: 0,
            correct: 0,
            loss_sum: 0.0,
            modality_correct: vec![0; num_modalities],
            modality_loss_sum: vec![0.0; num_modalities],
            head_correct: Vec::new(),
            head_loss_sum: Vec::new(),
        }
    }

    /// Adds one batch's per-modality head logits (models whose fusion sums one head per
    /// modality); call it for every batch or none.
    pub fn add_heads(&mut self, heads: &[Tensor], labels: &[u32]) -> Result<()> {
        if heads.len() != self.modality_correct.len() {
            candle_core::bail!("expected {} head outputs, got {}", self.modality_correct.len(), heads.len());
        }
        self.head_correct.resize(heads.len(), 0);
        self.head_loss_sum.resize(heads.len(), 0.0);
        for (x, hx) in heads.iter().enumerate() {
            self.head_correct[x] += count_correct(hx, labels)?;
            self.head_loss_sum[x] += cross_entropy_sum(hx, labels)?;
        }
        Ok(())
    }

    /// Adds one batch: fused logits and each modality's mono-modal logits.
    pub fn add(&mut self, fused: &Tensor, mono: &[Tensor], labels: &[u32]) -> Result<()> {
        if mono.len() != self.modality_correct.len() {
            candle_core::bail!("expected {} mono-modal outputs, got {}", self.modality_correct.len(), mono.len());
        }
        self.samples += labels.len();
        self.correct += count_correct(fused, labels)?;
        self.loss_sum += cross_entropy_sum(fused, labels)?;
        for (x, mx) in mono.iter().enumerate() {
            self.modality_correct[x] += count_correct(mx, labels)?;
            self.modality_loss_sum[x] += cross_entropy_sum(mx, labels)?;
        }
        Ok(())
    }

    /// The accuracies and mean losses over every batch added so far. The divisor is the sample
    /// count, or 1 when no batch was added (then every value is 0). Head values are empty unless
    /// [`EvalTally::add_heads`] was called.
    pub fn report(&self) -> EvalReport {
        let n = self.samples.max(1) as f64;
        EvalReport {
            samples: self.samples,
            accuracy: self.correct as f64 / n,
            loss: self.loss_sum / n,
            modalities: self.modalities.clone(),
            modality_accuracy: self.modality_correct.iter().map(|&c| c as f64 / n).collect(),
            modality_loss: self.modality_loss_sum.iter().map(|&l| l / n).collect(),
            head_accuracy: self.head_correct.iter().map(|&c| c as f64 / n).collect(),
            head_loss: self.head_loss_sum.iter().map(|&l| l / n).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn cross_entropy_matches_hand_value() {
        let logits = Tensor::new(&[[0.0f64, 0.0], [1.0, 0.0]], &Device::Cpu).unwrap();
        let ce = cross_entropy_sum(&logits, &[0, 1]).unwrap();
        let expect = 2f64.ln() + (1.0 + (1f64).exp()).ln();
        assert!((ce - expect).abs() < 1e-12);
    }

    #[test]
    fn tally_counts_micro_accuracy_across_batches() {
        let mut t = EvalTally::new(&["audio".into(), "visual".into()]);
        let a = Tensor::new(&[[1.0f32, 0.0]], &Device::Cpu).unwrap();
        let b = Tensor::new(&[[0.0f32, 1.0], [0.0, 1.0]], &Device::Cpu).unwrap();
        t.add(&a, &[a.clone(), b.narrow(0, 0, 1).unwrap()], &[0]).unwrap();
        t.add(&b, &[b.clone(), b.clone()], &[1, 0]).unwrap();
        let r = t.report();
        assert_eq!(r.samples, 3);
        assert!((r.accuracy - 2.0 / 3.0).abs() < 1e-12);
        assert!((r.modality_accuracy[1] - 1.0 / 3.0).abs() < 1e-12);
        assert!(t.add(&a, std::slice::from_ref(&a), &[0]).is_err(), "wrong number of modalities is an error");
        // In files, per-modality values are keyed by name; they read back in model order.
        let json = serde_json::to_string(&r).unwrap();
        assert!(
            json.contains(r#""modality_accuracy":{"audio":"#) && json.contains(r#""modalities":["audio","visual"]"#)
        );
        assert_eq!(serde_json::from_str::<EvalReport>(&json).unwrap(), r);
        // Arrays of earlier versions still read.
        let old = r#"{"samples":3,"accuracy":0.5,"loss":1.0,"modality_accuracy":[0.1,0.2],"modality_loss":[1.0,2.0]}"#;
        let read: EvalReport = serde_json::from_str(old).unwrap();
        assert_eq!(
            (read.modality_accuracy.clone(), read.modality_names()),
            (vec![0.1, 0.2], vec!["modality 1".to_string(), "modality 2".into()])
        );
    }
}
