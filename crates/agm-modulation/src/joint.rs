//! Plain joint training: one loss, no modulation.

use crate::{ClipRule, Modulator};

/// Joint training. With a clip rule it reproduces the reference's early-fusion runs, which clip
/// conditionally for every method.
#[derive(Clone, Debug, Default)]
pub struct Joint {
    clip: Option<ClipRule>,
}

impl Joint {
    pub fn new() -> Self {
        Self::default()
    }

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
