//! The one check every dataset passes before it is trained on or reported ok.
//!
//! [`super::load`] (which `train` uses) and `cargo xtask data check` both end in
//! [`validate_splits`], so what trains is exactly what was checked: every split holds samples,
//! no input has a zero-size dimension, and every input value is finite. Errors name the file
//! (and key) a split or modality came from.

use std::path::{Path, PathBuf};

use agm_core::BatchSource;
use candle_core::Device;

use super::{avmnist, urfunny, DatasetId, LoadOptions, LoadedDataset};
use crate::error::{DataError, Result};

/// Samples converted at a time while scanning for non-finite values.
const CHUNK: usize = 256;

/// Checks a loaded dataset: [`validate_splits`] over its splits.
pub fn validate_loaded(data: &LoadedDataset, root: &Path) -> Result<()> {
    let names: Vec<&str> = data.modalities.names().iter().map(String::as_str).collect();
    let mut parts: Vec<(&str, &dyn BatchSource)> =
        vec![("train", &data.train), ("validation", &data.validation), ("test", &data.test)];
    if let Some(dep) = &data.dep {
        parts.push(("dep", dep));
    }
    validate_splits(data.id, root, &names, &parts, &data.notes)
}

/// Checks AV-MNIST through its memory maps (for `data check`, without reading the multi-GB
/// arrays into memory at once): [`validate_splits`] over [`avmnist::MappedSplit`]s.
pub fn validate_avmnist_mapped(root: &Path, opts: &LoadOptions) -> Result<()> {
    let [train, validation, test, dep] = avmnist::MappedSplit::splits(root, opts)?;
    let parts: [(&str, &dyn BatchSource); 4] =
        [("train", &train), ("validation", &validation), ("test", &test), ("dep", &dep)];
    validate_splits(DatasetId::AvMnist, root, &["audio", "visual"], &parts, &[])
}

/// Fails when a split has no samples, or when any input holds NaN or infinite values (all
/// offenders are listed with their counts). `notes` are the loader's notes about skipped rows,
/// quoted when a split is empty.
pub fn validate_splits(
    id: DatasetId,
    root: &Path,
    modalities: &[&str],
    splits: &[(&str, &dyn BatchSource)],
    notes: &[String],
) -> Result<()> {
    for &(split, s) in splits {
        if s.is_empty() {
            let (path, _) = source(id, root, split, None);
            let mut reason = empty_reason(id, split);
            if let Some(first) = notes.first() {
                reason.push_str(&format!("; the loader skipped {} entries, first: {first}", notes.len()));
            }
            return Err(DataError::EmptySplit { path, split: split.to_string(), reason });
        }
    }
    let mut offenders = Vec::new();
    let mut total = 0usize;
    for &(split, s) in splits {
        let mut counts = vec![(0usize, None::<usize>); modalities.len()];
        for start in (0..s.len()).step_by(CHUNK) {
            let idx: Vec<usize> = (start..(start + CHUNK).min(s.len())).collect();
            let batch = s.batch(&idx, &Device::Cpu)?;
            if start == 0 {
                zero_size_dims(id, root, split, modalities, &batch.inputs)?;
            }
            for (m, t) in batch.inputs.iter().enumerate().take(modalities.len()) {
                let per = t.dims().iter().skip(1).product::<usize>().max(1);
                let values = t.flatten_all()?.to_vec1::<f32>()?;
                for (i, v) in values.iter().enumerate() {
                    if !v.is_finite() {
                        counts[m].0 += 1;
                        counts[m].1.get_or_insert(start + i / per);
                    }
                }
            }
        }
        for (m, (count, first)) in counts.into_iter().enumerate() {
            if count > 0 {
                total += count;
                let (path, field) = source(id, root, split, Some(modalities[m]));
                let field = field.map(|f| format!(" `{f}`")).unwrap_or_default();
                offenders.push((
                    path.clone(),
                    format!(
                        "{}{field}: {count} NaN/Inf values in {split} {} (first in sample {})",
                        path.display(),
                        modalities[m],
                        first.unwrap_or(0)
                    ),
                ));
            }
        }
    }
    match offenders.first() {
        None => Ok(()),
        Some((path, _)) => Err(DataError::NonFinite {
            path: path.clone(),
            count: total,
            listing: offenders.iter().map(|(_, s)| s.as_str()).collect::<Vec<_>>().join("; "),
        }),
    }
}

/// Fails when a modality's samples have a zero-size dimension (`inputs` are one batch, its first
/// dimension the batch): no encoder can read them, and the loaders' own shape checks should have
/// refused them already, so this is the net under every loader.
fn zero_size_dims(
    id: DatasetId,
    root: &Path,
    split: &str,
    modalities: &[&str],
    inputs: &[candle_core::Tensor],
) -> Result<()> {
    for (m, t) in inputs.iter().enumerate().take(modalities.len()) {
        let sample = &t.dims()[1.min(t.rank())..];
        if sample.contains(&0) {
            let (path, field) = source(id, root, split, Some(modalities[m]));
            let field = field.map(|f| format!(" (`{f}`)")).unwrap_or_default();
            return Err(DataError::BadShape {
                path,
                shape: sample.to_vec(),
                reason: format!(
                    "{split} {} samples{field} have a zero-size dimension; every dimension of an input must be at \
                     least 1 (the layouts are in README.md, section Datasets)",
                    modalities[m]
                ),
            });
        }
    }
    Ok(())
}

/// Why a split of dataset `id` can come out empty, and what to give it.
fn empty_reason(id: DatasetId, split: &str) -> String {
    let ninety = "AGM keeps the first int(0.9 N) rows for train (10 % of those, at least one, for validation) \
                  and the rest for dep";
    match id {
        DatasetId::AvMnist => {
            format!("{ninety}; train_labels.npy needs at least 3 rows and test_labels.npy at least 2")
        }
        DatasetId::CremaD => format!(
            "only csv rows whose wav (or Spectrogram/*.npy) and frame folder exist are used; {ninety}; \
             train.csv needs at least 3 usable rows and test.csv at least 2"
        ),
        DatasetId::UrFunny => {
            "rows whose text is all zero are dropped (as AGM does); give the split rows with text".into()
        }
        DatasetId::Ave => "the order file lists no rows; list the split's row indices in dataset `order`".into(),
        DatasetId::Mosei => {
            let s = file_split(split);
            format!(
                "no key of {s}_sentences.p is also in {s}_mels.p and {s}_sentiment.p; the three files must share keys"
            )
        }
        DatasetId::AvDigits | DatasetId::Synthetic => "the generated split is empty".into(),
    }
}

/// The split name as the dataset's files spell it.
fn file_split(split: &str) -> &str {
    match split {
        "validation" => "valid",
        "dep" => "test",
        s => s,
    }
}

/// The file (and key) that a split, or one modality of it, was read from.
fn source(id: DatasetId, root: &Path, split: &str, modality: Option<&str>) -> (PathBuf, Option<String>) {
    let train_side = matches!(split, "train" | "validation");
    match id {
        DatasetId::AvMnist => {
            let side = if train_side || split == "dep" { "train" } else { "test" };
            let file = match modality {
                None => format!("{side}_labels.npy"),
                Some("visual") => format!("image/{side}_data.npy"),
                Some(_) => format!("audio/{side}_data.npy"),
            };
            (root.join(file), (split == "dep").then(|| "and the test files' last 10 % rows".into()))
        }
        DatasetId::CremaD => {
            let csv = root.join(if train_side || split == "dep" { "CREMAD/train.csv" } else { "CREMAD/test.csv" });
            let field = modality.map(|m| {
                if m == "visual" {
                    "frames (Image-01-FPS/<clip>/) of its clips".to_string()
                } else {
                    "audio (Audio/<clip>.wav or Spectrogram/<clip>.npy) of its clips".to_string()
                }
            });
            (csv, field)
        }
        DatasetId::UrFunny => {
            let key = file_split(split);
            let field = match modality {
                Some("visual") => format!("{key}/vision"),
                Some(m) => format!("{key}/{m}"),
                None => key.to_string(),
            };
            (urfunny::pickle_path(root), Some(field))
        }
        DatasetId::Ave => {
            let file = match modality {
                None => format!("{}_order.h5", if split == "validation" { "val" } else { split }),
                Some("visual") => "visual_feature.h5".into(),
                Some(_) => "audio_feature.h5".into(),
            };
            (root.join(file), None)
        }
        DatasetId::Mosei => {
            let s = file_split(split);
            let file = match modality {
                Some("audio") => format!("{s}_mels.p"),
                _ => format!("{s}_sentences.p"),
            };
            (root.join(file), None)
        }
        DatasetId::AvDigits | DatasetId::Synthetic => (root.to_path_buf(), None),
    }
}
