//! Plain joint training: one loss, no modulation.

use crate::MethodError;
use serde::{Deserialize, Serialize};

use crate::{ClipRule, Modulator};

/// Joint-training settings. The reference clips conditionally in every early-fusion run and in
/// every MOSEI run, whatever the method; late-fusion joint runs elsewhere do not clip.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JointConfig {
    /// The conditional clipping after the backward (none by default).
    #[serde(with = "agm_core::serde_none")]
    pub clip: Option<ClipRule>,
}

impl JointConfig {
    /// No clipping: the reference's late-fusion joint runs (AV-MNIST, CREMA-D, UR-Funny, AVE).
    pub fn plain() -> Self {
        Self::default()
    }

    /// The reference's early-fusion runs: clip the global norm to `max_norm` when the head
    /// weight's gradient leaves `[−threshold, threshold]` (1 for AV-MNIST and CREMA-D, 5 for
    /// UR-Funny).
    pub fn early_fusion(threshold: f64) -> Self {
        Self { clip: Some(ClipRule::outside_band(threshold, threshold)) }
    }

    /// MOSEI: every multimodal run clips with the reference's condition as written (Q9).
    pub fn paper_mosei() -> Self {
        Self { clip: Some(ClipRule { threshold: 1.0, max_norm: 1.0, condition: crate::ClipCondition::MoseiQuirk }) }
    }

    /// Checks every field; the error names the field.
    pub fn validate(&self) -> std::result::Result<(), MethodError> {
        self.clip.as_ref().map_or(Ok(()), |c| c.validate("joint"))
    }
}

/// Joint training. With a clip rule it reproduces the reference's early-fusion runs, which clip
/// conditionally for every method.
#[derive(Clone, Debug, Default)]
pub struct Joint {
    clip: Option<ClipRule>,
}

impl Joint {
    /// Joint training without clipping.
    pub fn new() -> Self {
        Self::default()
    }

    /// Joint training with the conditional clipping `clip` after the backward (`None`: no
    /// clipping).
    pub fn with_clip(clip: Option<ClipRule>) -> Self {
        Self { clip }
    }
}

impl Modulator for Joint {
    fn name(&self) -> &'static str {
        "joint"
    }

    fn clip_rule(&self) -> Option<ClipRule> {
        self.clip
    }
}

impl crate::Method for Joint {
    const NAME: &'static str = "joint";
    const HOOKS: crate::Hooks = crate::Hooks::EDITS;
    type Config = JointConfig;

    fn preset(dataset: &str) -> JointConfig {
        match dataset {
            "mosei" => JointConfig::paper_mosei(),
            _ => JointConfig::plain(),
        }
    }

    fn validate(config: &JointConfig) -> std::result::Result<(), MethodError> {
        config.validate()
    }

    fn build(config: &JointConfig, _: &crate::BuildCx<'_>) -> std::result::Result<Self, MethodError> {
        Ok(Joint::with_clip(config.clip))
    }
}
