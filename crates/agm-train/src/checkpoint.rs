//! Checkpoints: one safetensors file holding the model's variables (`model/<name>`), the
//! optimizer state (`optim/<name>`) and, in the header metadata, the trainer and modulator state
//! as JSON. Written atomically (temporary file, then rename), so a crash never leaves a torn file.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::error::{Result, TrainError};

const FORMAT: &str = "agm-checkpoint-v1";

/// The contents of a checkpoint.
#[derive(Debug, Default)]
pub struct Checkpoint {
    pub model: HashMap<String, Tensor>,
    pub optimizer: HashMap<String, Tensor>,
    /// JSON metadata: `trainer`, `modulator`, and anything else a caller stores.
    pub meta: HashMap<String, String>,
}

/// Writes `bytes` to `path` through a temporary sibling and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("{}.tmp", path.extension().and_then(|e| e.to_str()).unwrap_or("")));
    std::fs::write(&tmp, bytes).map_err(|e| TrainError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
}

impl Checkpoint {
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut meta = self.meta.clone();
        meta.insert("format".into(), FORMAT.into());
        let mut named: Vec<(String, Tensor)> = Vec::new();
        for (prefix, map) in [("model", &self.model), ("optim", &self.optimizer)] {
            for (k, v) in map {
                // Contiguous CPU copies: safetensors writes raw bytes.
                named.push((format!("{prefix}/{k}"), v.to_device(&Device::Cpu)?.contiguous()?));
            }
        }
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let bytes = safetensors::serialize(named.iter().map(|(k, v)| (k.as_str(), v)), Some(meta))
            .map_err(|e| TrainError::checkpoint(path, format!("cannot serialize: {e}")))?;
        write_atomic(path, &bytes)
    }

    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                TrainError::checkpoint(path, "not found; is this a run directory written by `cargo xtask train`?")
            } else {
                TrainError::io(path, e)
            }
        })?;
        let corrupt = |e: String| {
            TrainError::checkpoint(
                path,
                format!("corrupt or not an agm checkpoint ({e}); start a fresh run with --out"),
            )
        };
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(corrupt(format!("missing format tag `{FORMAT}`")));
        }
        let tensors = candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| corrupt(e.to_string()))?;
        let mut ck = Checkpoint { meta, ..Checkpoint::default() };
        for (k, v) in tensors {
            if let Some(name) = k.strip_prefix("model/") {
                ck.model.insert(name.to_string(), v);
            } else if let Some(name) = k.strip_prefix("optim/") {
                ck.optimizer.insert(name.to_string(), v);
            } else {
                return Err(corrupt(format!("unexpected tensor `{k}`")));
            }
        }
        Ok(ck)
    }

    /// A JSON metadata entry, parsed.
    pub fn meta_json<T: serde::de::DeserializeOwned>(&self, key: &str, path: &Path) -> Result<T> {
        let raw =
            self.meta.get(key).ok_or_else(|| TrainError::checkpoint(path, format!("metadata `{key}` is missing")))?;
        serde_json::from_str(raw).map_err(|e| TrainError::checkpoint(path, format!("metadata `{key}` is invalid: {e}")))
    }
}

// The strict weights loader lives with the state-dict reader; this path keeps older callers working.
pub use crate::state_dict::load_weights;
