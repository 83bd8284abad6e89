//! The fields of a `train_steps` case.json that the runner reads (FORMAT.md §1.1).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};

/// Top-level fields the `train_steps` runner uses; every other field is informational.
pub(super) const USED_FIELDS: &[&str] = &[
    "case",
    "format_version",
    "kind",
    "dtype",
    "modalities",
    "method",
    "hyper",
    "sizes",
    "network",
    "parameters",
    "grad_stages",
    "steps",
];

#[derive(Debug, Deserialize)]
pub(super) struct TrainStepsCase {
    pub dtype: String,
    pub modalities: Vec<String>,
    pub method: String,
    pub hyper: Hyper,
    pub sizes: Sizes,
    #[serde(default)]
    pub network: Option<Network>,
    pub parameters: Vec<ParamSpec>,
    pub grad_stages: Vec<String>,
    pub steps: Vec<Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct Hyper {
    pub alpha: f64,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub dampening: f64,
    pub nesterov: bool,
    #[serde(default)]
    pub lr_schedule: Option<LrScheduleSpec>,
    pub modulation_window_epochs: [usize; 2],
    pub coeff_clamp: Option<f64>,
    pub prob_floor: Option<f64>,
    pub clip: Option<ClipSpec>,
    /// OGM-GE's alpha (`alpha` repeats it).
    #[serde(default)]
    pub ogm_alpha: Option<f64>,
    /// How the OGM-GE noise ran (`"disabled (exactly zero)"` in the fixtures).
    #[serde(default)]
    pub ogm_noise: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct LrScheduleSpec {
    pub kind: String,
    #[serde(default)]
    pub step_size_epochs: Option<usize>,
    #[serde(default)]
    pub gamma: Option<f64>,
}

#[derive(Debug, Deserialize)]
pub(super) struct ClipSpec {
    pub threshold_on_head_weight_grad: f64,
    pub max_norm: f64,
    #[serde(default)]
    pub eps: Option<f64>,
}

#[derive(Debug, Deserialize)]
pub(super) struct Sizes {
    #[serde(rename = "C")]
    pub classes: usize,
    pub hidden: usize,
    pub input_shapes: BTreeMap<String, Vec<usize>>,
    #[serde(default)]
    pub conv_channels: usize,
}

#[derive(Debug, Deserialize)]
pub(super) struct Network {
    #[serde(default)]
    pub encoder: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: String,
}

impl Network {
    /// A `name=value` setting of the BatchNorm in the encoder description
    /// (`BatchNorm1d(hidden, eps=1e-5, momentum=0.1)`), if written there.
    pub fn batch_norm_setting(&self, name: &str) -> Option<Result<f64, String>> {
        let text = self.encoder.as_deref()?;
        let bn = &text[text.find("BatchNorm")?..];
        let bn = &bn[..bn.find(')').unwrap_or(bn.len())];
        let key = format!("{name}=");
        let start = bn.find(&key)? + key.len();
        let raw = bn[start..].split([',', ')']).next().unwrap_or("").trim();
        Some(raw.parse::<f64>().map_err(|_| format!("network.encoder: cannot read BatchNorm {name} `{raw}`")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_batch_norm_settings() {
        let n = Network {
            encoder: Some(
                "Flatten -> Linear(in, hidden) -> BatchNorm1d(hidden, eps=1e-5, momentum=0.1) -> ReLU".into(),
            ),
        };
        assert_eq!(n.batch_norm_setting("eps"), Some(Ok(1e-5)));
        assert_eq!(n.batch_norm_setting("momentum"), Some(Ok(0.1)));
        assert_eq!(n.batch_norm_setting("affine"), None);
        assert_eq!(Network { encoder: None }.batch_norm_setting("eps"), None);
    }
}
