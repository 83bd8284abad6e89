//! Checkpoints: one safetensors file holding the model's variables (`model/<name>`), the
//! optimizer state (`optim/<name>`), the method's snapshots (`snapshot/<k>/model/<name>`,
//! `snapshot/<k>/optim/<name>`) and, in the header metadata, the trainer and modulator state as
//! JSON and the name of the method that wrote it (a resume by another method is refused).
//! Written atomically (temporary file, then rename), so a crash never leaves a torn file; every
//! tensor is checked for NaN and infinity on the way out and on the way in, and the whole file
//! against the CRC-32 in its header, so damage after writing (a disk, a copy) is refused.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{DType, Device, Tensor};

use crate::error::{Result, TrainError};

/// v2 files carry a checksum ([`verify_checksum`]); v1 files, of earlier versions, are read
/// without one.
const FORMAT: &str = "agm-checkpoint-v2";
const FORMAT_V1: &str = "agm-checkpoint-v1";

/// The header entry holding a file's checksum: `crc32:<8 hex digits>` of the header (this
/// entry's value zeroed) and the data after it.
const CHECKSUM: &str = "checksum";
const CHECKSUM_ZERO: &str = "crc32:00000000";

/// The contents of a checkpoint.
#[derive(Debug, Default)]
pub struct Checkpoint {
    /// Model variables (trainable and buffers) by checkpoint name, and the method's own
    /// variables as `method.<name>`; stored as `model/<name>`.
    pub model: HashMap<String, Tensor>,
    /// Optimizer state by key ([`crate::optim::Optimizer::state`]: `<param>/step`,
    /// `<param>/momentum_buffer` …); stored as `optim/<key>`.
    pub optimizer: HashMap<String, Tensor>,
    /// Method snapshots by tag (MSES saves one and restores it epochs later).
    pub snapshots: BTreeMap<String, SnapshotState>,
    /// JSON metadata: `trainer`, `modulator`, and anything else a caller stores.
    pub meta: HashMap<String, String>,
}

/// The training state of one moment: model (and method-owned) tensors, optimizer tensors and the
/// modulator's state. A checkpoint holds the current one (plus the loop position), a snapshot an
/// earlier one; [`crate::Trainer`] captures and restores both the same way.
#[derive(Clone, Debug, Default)]
pub struct SnapshotState {
    /// Model and method variables by checkpoint name, as in [`Checkpoint::model`].
    pub model: HashMap<String, Tensor>,
    /// Optimizer state by key, as in [`Checkpoint::optimizer`].
    pub optimizer: HashMap<String, Tensor>,
    /// The modulator's state ([`agm_modulation::Modulator::state`]).
    pub modulator: serde_json::Value,
    /// A method snapshot's learning rate for the epoch after it, which its restore brings back
    /// (`None` in a checkpoint's own state, and in snapshots of earlier versions).
    pub learning_rate: Option<f64>,
}

/// Writes `bytes` to `path` through a temporary sibling and a rename.
///
/// The temporary name is unique per process and call, so two writers never share one, and a
/// failed write removes it. The data is synced before the rename so a power loss leaves either
/// the old file or the new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_inner(path, bytes, false)
}

/// `safetensors::serialize` with the header's keys in sorted order, so that identical runs write
/// identical bytes (the crate writes the metadata from a `HashMap`, whose order changes from
/// process to process), and with the file's checksum in the header ([`verify_checksum`]).
pub(crate) fn serialize_sorted<'a>(
    tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
    mut meta: HashMap<String, String>,
) -> std::result::Result<Vec<u8>, String> {
    // Room for the checksum, which has the placeholder's length.
    meta.insert(CHECKSUM.into(), CHECKSUM_ZERO.into());
    let mut bytes = safetensors::serialize(tensors, Some(meta)).map_err(|e| e.to_string())?;
    let len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let (header, data) = bytes[8..].split_at_mut(len);
    // serde_json's map is a BTreeMap: parsing and writing again sorts every key. The text is
    // the same JSON, so it fits in the padded header; the padding is spaces, as the crate's.
    let mut value: serde_json::Value = serde_json::from_slice(header).map_err(|e| e.to_string())?;
    value["__metadata__"][CHECKSUM] = checksum_of(&value, data).into();
    let mut sorted = serde_json::to_vec(&value).map_err(|e| e.to_string())?;
    if sorted.len() > len {
        return Err(format!("the sorted header is {} bytes, the written one {len}", sorted.len()));
    }
    sorted.resize(len, b' ');
    header.copy_from_slice(&sorted);
    Ok(bytes)
}

/// The checksum of a file with `header` (its checksum entry holding [`CHECKSUM_ZERO`]) and `data`.
fn checksum_of(header: &serde_json::Value, data: &[u8]) -> String {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&serde_json::to_vec(header).expect("a parsed header writes back"));
    crc.update(data);
    format!("crc32:{:08x}", crc.finalize())
}

/// Checks a safetensors file that [`serialize_sorted`] wrote against the checksum in its header:
/// `Ok(true)` when it matches, `Ok(false)` when the file has none (written by an earlier version),
/// and the mismatch otherwise.
pub(crate) fn verify_checksum(bytes: &[u8]) -> std::result::Result<bool, String> {
    let len = bytes.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize);
    let Some((header, data)) = len.filter(|&n| n <= bytes.len() - 8).map(|n| bytes[8..].split_at(n)) else {
        return Err("incomplete header".into());
    };
    let mut value: serde_json::Value = serde_json::from_slice(header).map_err(|e| format!("header: {e}"))?;
    let found = match value.get("__metadata__").and_then(|m| m.get(CHECKSUM)) {
        None => return Ok(false),
        Some(found) => found.as_str().unwrap_or_default().to_string(),
    };
    value["__metadata__"][CHECKSUM] = CHECKSUM_ZERO.into();
    let computed = checksum_of(&value, data);
    if found != computed {
        return Err(format!(
            "its checksum is {found} but its contents give {computed}: it changed after it was written (a disk or \
             copy error)"
        ));
    }
    Ok(true)
}

/// Temporary sibling of `path`: `<name>.<pid>.<counter>.tmp`.
fn temporary_for(path: &Path) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let k = COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!("{name}.{}.{k}.tmp", std::process::id()))
}

/// `crash_after_temp` simulates a process killed between writing the temporary and the rename
/// (the temporary stays, the target is untouched); only the trainer's test hook sets it.
fn write_atomic_inner(path: &Path, bytes: &[u8], crash_after_temp: bool) -> Result<()> {
    let tmp = temporary_for(path);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .map_err(|e| TrainError::io(&tmp, e));
    if crash_after_temp && written.is_ok() {
        return Err(TrainError::io(
            path,
            std::io::Error::other(format!("failpoint: stopped after writing {}", tmp.display())),
        ));
    }
    let result = written.and_then(|()| std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e)));
    if result.is_err() {
        // Best effort: the error being reported matters more than a failed cleanup.
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The name of the first tensor holding NaN or infinity, if any.
pub fn first_non_finite<'a>(tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>) -> Result<Option<String>> {
    for (name, t) in tensors {
        if !is_finite(t)? {
            return Ok(Some(name.to_string()));
        }
    }
    Ok(None)
}

/// True when every element is finite; integer tensors always are.
fn is_finite(t: &Tensor) -> candle_core::Result<bool> {
    if !matches!(t.dtype(), DType::F16 | DType::BF16 | DType::F32 | DType::F64) || t.elem_count() == 0 {
        return Ok(true);
    }
    // 0·x is 0 for finite x and NaN for NaN or ±inf, and one NaN makes the sum NaN.
    let s = t.affine(0.0, 0.0)?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    Ok(s == 0.0)
}

impl Checkpoint {
    /// Every tensor under its file name, sorted, as contiguous CPU copies.
    fn named_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut named: Vec<(String, Tensor)> = Vec::new();
        let mut add = |prefix: &str, map: &HashMap<String, Tensor>| -> Result<()> {
            for (k, v) in map {
                // Contiguous CPU copies: safetensors writes raw bytes.
                named.push((format!("{prefix}{k}"), v.to_device(&Device::Cpu)?.contiguous()?));
            }
            Ok(())
        };
        add("model/", &self.model)?;
        add("optim/", &self.optimizer)?;
        for (i, snap) in self.snapshots.values().enumerate() {
            add(&format!("snapshot/{i}/model/"), &snap.model)?;
            add(&format!("snapshot/{i}/optim/"), &snap.optimizer)?;
        }
        named.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(named)
    }

    /// Writes the checkpoint; refuses (and leaves the previous file) when a tensor holds NaN or
    /// infinity, naming the first one.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.save_inner(path, false)
    }

    pub(crate) fn save_inner(&self, path: &Path, crash_after_temp: bool) -> Result<()> {
        let named = self.named_tensors()?;
        if let Some(tensor) = first_non_finite(named.iter().map(|(k, v)| (display_name(k), v)))? {
            return Err(TrainError::NonFiniteTensor { path: path.to_path_buf(), tensor, position: String::new() });
        }
        let mut meta = self.meta.clone();
        meta.insert("format".into(), FORMAT.into());
        if !self.snapshots.is_empty() {
            let index: Vec<serde_json::Value> = self
                .snapshots
                .iter()
                .map(|(tag, s)| serde_json::json!({ "tag": tag, "modulator": s.modulator, "learning_rate": s.learning_rate }))
                .collect();
            meta.insert("snapshots".into(), serde_json::Value::Array(index).to_string());
        }
        let bytes = serialize_sorted(named.iter().map(|(k, v)| (k.as_str(), v)), meta)
            .map_err(|e| TrainError::checkpoint(path, format!("cannot serialize: {e}")))?;
        write_atomic_inner(path, &bytes, crash_after_temp)
    }

    /// Reads a checkpoint onto `device`. Refuses, with [`TrainError::Checkpoint`], a missing file,
    /// one that is not an agm checkpoint (no format tag), a v2 file whose checksum is absent or
    /// does not match, a tensor holding NaN or infinity, and a tensor outside the known prefixes;
    /// v1 files load without a checksum. Other read failures are [`TrainError::Io`].
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
                format!(
                    "corrupt or not an agm checkpoint ({e}); restore it from a copy, or start a fresh run with --out"
                ),
            )
        };
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let mut meta = header.metadata().clone().unwrap_or_default();
        let format = meta.get("format").map(String::as_str);
        if format != Some(FORMAT) && format != Some(FORMAT_V1) {
            return Err(corrupt(format!("missing format tag `{FORMAT}`")));
        }
        let verified = verify_checksum(&bytes).map_err(corrupt)?;
        if !verified && format == Some(FORMAT) {
            return Err(corrupt(format!("a `{FORMAT}` file without its `{CHECKSUM}` entry")));
        }
        meta.remove(CHECKSUM);
        let tensors = candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| corrupt(e.to_string()))?;
        let mut sorted: Vec<(&String, &Tensor)> = tensors.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        if let Some(name) = first_non_finite(sorted.into_iter().map(|(k, v)| (display_name(k), v)))? {
            return Err(TrainError::checkpoint(
                path,
                format!(
                    "tensor `{name}` holds NaN or infinity; this checkpoint cannot be resumed, start a fresh run \
                     with --out (and a lower learning rate or alpha)"
                ),
            ));
        }
        let mut ck = Checkpoint { meta, ..Checkpoint::default() };
        let tags: Vec<(String, (serde_json::Value, Option<f64>))> = match ck.meta.get("snapshots") {
            None => Vec::new(),
            Some(raw) => {
                #[derive(serde::Deserialize)]
                struct Entry {
                    tag: String,
                    modulator: serde_json::Value,
                    #[serde(default)]
                    learning_rate: Option<f64>,
                }
                let entries: Vec<Entry> =
                    serde_json::from_str(raw).map_err(|e| corrupt(format!("metadata `snapshots`: {e}")))?;
                entries.into_iter().map(|e| (e.tag, (e.modulator, e.learning_rate))).collect()
            }
        };
        let mut snapshots: Vec<SnapshotState> = tags
            .iter()
            .map(|(_, (modulator, learning_rate))| SnapshotState {
                modulator: modulator.clone(),
                learning_rate: *learning_rate,
                ..SnapshotState::default()
            })
            .collect();
        for (k, v) in tensors {
            if let Some(name) = k.strip_prefix("model/") {
                ck.model.insert(name.to_string(), v);
            } else if let Some(name) = k.strip_prefix("optim/") {
                ck.optimizer.insert(name.to_string(), v);
            } else if let Some(rest) = k.strip_prefix("snapshot/") {
                let (index, rest) = rest.split_once('/').ok_or_else(|| corrupt(format!("unexpected tensor `{k}`")))?;
                let snap = index
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| snapshots.get_mut(i))
                    .ok_or_else(|| corrupt(format!("tensor `{k}` belongs to no listed snapshot")))?;
                if let Some(name) = rest.strip_prefix("model/") {
                    snap.model.insert(name.to_string(), v);
                } else if let Some(name) = rest.strip_prefix("optim/") {
                    snap.optimizer.insert(name.to_string(), v);
                } else {
                    return Err(corrupt(format!("unexpected tensor `{k}`")));
                }
            } else {
                return Err(corrupt(format!("unexpected tensor `{k}`")));
            }
        }
        ck.snapshots = tags.into_iter().map(|(t, _)| t).zip(snapshots).collect();
        Ok(ck)
    }

    /// A JSON metadata entry, parsed.
    pub fn meta_json<T: serde::de::DeserializeOwned>(&self, key: &str, path: &Path) -> Result<T> {
        let raw =
            self.meta.get(key).ok_or_else(|| TrainError::checkpoint(path, format!("metadata `{key}` is missing")))?;
        serde_json::from_str(raw).map_err(|e| TrainError::checkpoint(path, format!("metadata `{key}` is invalid: {e}")))
    }
}

/// A file name without its `model/` prefix, the name users know from the model.
fn display_name(k: &str) -> &str {
    k.strip_prefix("model/").unwrap_or(k)
}

// The strict weights loader lives with the state-dict reader; this path keeps older callers working.
pub use crate::state_dict::load_weights;

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkpoint whose maps were filled in `order`.
    fn checkpoint(order: &[usize]) -> Checkpoint {
        let mut ck = Checkpoint::default();
        for &i in order {
            let t = Tensor::new(&[i as f32, 0.5], &Device::Cpu).unwrap();
            ck.model.insert(format!("net.layer{i}.weight"), t.clone());
            ck.optimizer.insert(format!("momentum.layer{i}"), t);
            ck.meta.insert(format!("key{i}"), format!("{{\"value\": {i}}}"));
        }
        ck
    }

    #[test]
    fn the_same_checkpoint_is_written_as_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let forward: Vec<usize> = (0..24).collect();
        let backward: Vec<usize> = (0..24).rev().collect();
        let (a, b) = (dir.path().join("a.safetensors"), dir.path().join("b.safetensors"));
        checkpoint(&forward).save(&a).unwrap();
        checkpoint(&backward).save(&b).unwrap();
        let bytes = std::fs::read(&a).unwrap();
        assert_eq!(bytes, std::fs::read(&b).unwrap());
        // Still a safetensors file that reads back whole.
        let back = Checkpoint::load(&a, &Device::Cpu).unwrap();
        assert_eq!(back.meta.get("key7").map(String::as_str), Some("{\"value\": 7}"));
        assert_eq!(back.model["net.layer3.weight"].to_vec1::<f32>().unwrap(), [3.0, 0.5]);
        assert_eq!(back.optimizer.len(), 24);
        let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(len % 8, 0, "the header stays padded to 8 bytes");
    }
}
