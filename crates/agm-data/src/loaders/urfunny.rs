//! UR-Funny (MultiBench `humor.pkl`): `{'train'|'valid'|'test': {'vision' [N,T,371],
//! 'audio' [N,T,81], 'text' [N,T,300], 'labels' [N,1]|[N], ...}}` (docs/datasets.md).
//!
//! Processing as AGM (`aligned=True, z_norm=False`): rows with all-zero text are dropped; audio
//! `-inf` → 0; every modality is cut to `[start:]` where `start` is the first non-zero text
//! step; label `< 1` → 0 else 1 (a non-finite label is an error). Each sample is stored
//! right-padded with zeros to the file's `T` with its valid length `T − start`, and every batch
//! is cut to its longest valid length, as AGM's `pad_sequence` collate pads each batch: its
//! transformers attend to every zero step (no padding mask), so the number of them changes the
//! outputs. Evaluation therefore batches UR-Funny in order at the run's batch size, as AGM's
//! loaders do. `T` and every feature width `F` must be at least 1, and a modality's `F` the same
//! in every split (one model reads them all).

use std::path::{Path, PathBuf};

use agm_core::ModalitySet;

use super::array::Array;
use super::pickle::{read_pickle, Py};
use super::{require, LoadedDataset};
use crate::dataset::SplitTensors;
use crate::error::{DataError, Result};

/// Binary: humour (label at least 1) or not.
pub const CLASSES: usize = 2;
/// Modality order: audio, visual, text (the reference's concatenation order).
pub const MODALITIES: [&str; 3] = ["audio", "visual", "text"];

fn get_array(path: &Path, split: &Py, split_name: &str, key: &str) -> Result<Array> {
    match split.get(key) {
        Some(Py::Array(a)) => Ok(a.clone()),
        Some(other) => Err(DataError::BadSource {
            path: path.to_path_buf(),
            reason: format!("`{split_name}/{key}` is {}, not a numeric numpy array", other.a_kind()),
        }),
        None => Err(DataError::MissingKey { path: path.to_path_buf(), key: format!("{split_name}/{key}") }),
    }
}

/// The pickle path: `path` itself, or `path/humor.pkl` for a folder.
pub fn pickle_path(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join("humor.pkl")
    } else {
        path.to_path_buf()
    }
}

/// One split: its tensors, the rows dropped for all-zero text, and the `[N, T, F]` shapes of
/// audio, vision and text as stored.
fn split(path: &Path, root: &Py, name: &str) -> Result<(SplitTensors, usize, Vec<Vec<usize>>)> {
    let s = root.get(name).ok_or_else(|| DataError::MissingKey { path: path.to_path_buf(), key: name.to_string() })?;
    let mut mods = Vec::new();
    for key in ["audio", "vision", "text"] {
        let a = get_array(path, s, name, key)?;
        if a.shape.len() != 3 {
            return Err(DataError::BadShape {
                path: path.to_path_buf(),
                shape: a.shape.clone(),
                reason: format!("`{name}/{key}` must be [N, T, F]"),
            });
        }
        mods.push(a);
    }
    let labels = get_array(path, s, name, "labels")?;
    let n = mods[2].shape[0];
    for (a, key) in mods.iter().zip(["audio", "vision", "text"]).chain([(&labels, "labels")]) {
        if a.shape.first() != Some(&n) || (key != "labels" && a.shape[1] != mods[2].shape[1]) {
            return Err(DataError::BadShape {
                path: path.to_path_buf(),
                shape: a.shape.clone(),
                reason: format!("`{name}/{key}` must have {n} rows and T = {} like `{name}/text`", mods[2].shape[1]),
            });
        }
    }
    if labels.len() != n {
        return Err(DataError::BadShape {
            path: path.to_path_buf(),
            shape: labels.shape.clone(),
            reason: format!("`{name}/labels` must be [N] or [N, 1]"),
        });
    }
    for (a, key) in mods.iter().zip(["audio", "vision", "text"]) {
        if a.shape[1] == 0 || a.shape[2] == 0 {
            return Err(DataError::BadShape {
                path: path.to_path_buf(),
                shape: a.shape.clone(),
                reason: format!("`{name}/{key}` must be [N, T, F] with at least one step T and one feature F per step"),
            });
        }
    }
    let label_values = labels.to_f64();
    if let Some((row, v)) = label_values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(DataError::BadSource {
            path: path.to_path_buf(),
            reason: format!(
                "`{name}/labels` sample {row} is {v}; labels must be finite numbers (below 1 is class 0, \
                 otherwise class 1)"
            ),
        });
    }
    let t = mods[2].shape[1];
    let values: Vec<Vec<f32>> = mods.iter().map(Array::to_f32).collect();
    let widths: Vec<usize> = mods.iter().map(|a| a.shape[2]).collect();
    let mut data: Vec<Vec<f32>> = vec![Vec::new(); 3];
    let mut out_labels = Vec::new();
    let mut valid_lengths = Vec::new();
    let mut dropped = 0;
    for i in 0..n {
        let text = &values[2][i * t * widths[2]..(i + 1) * t * widths[2]];
        let Some(first) = text.iter().position(|&v| v != 0.0) else {
            dropped += 1;
            continue;
        };
        let start = first / widths[2];
        for m in 0..3 {
            let w = widths[m];
            let sample = &values[m][i * t * w..(i + 1) * t * w];
            let kept = &sample[start * w..];
            data[m].extend(kept.iter().map(|&v| if m == 0 && v == f32::NEG_INFINITY { 0.0 } else { v }));
            data[m].extend(std::iter::repeat_n(0.0, start * w));
        }
        out_labels.push(if label_values[i] < 1.0 { 0 } else { 1 });
        // `aligned`: one start for every modality, so one length.
        valid_lengths.push(t - start);
    }
    let shapes = widths.iter().map(|&w| vec![t, w]).collect();
    let stored = mods.into_iter().map(|a| a.shape).collect();
    Ok((SplitTensors::new(data, shapes, out_labels).with_valid_lengths(valid_lengths), dropped, stored))
}

/// Loads UR-Funny from the pickle (`path` is the file, or a folder holding `humor.pkl`):
/// train = `train`, validation = `valid`, test = `test`, dep = `test` (as AGM).
pub fn load(path: &Path) -> Result<LoadedDataset> {
    let file = pickle_path(path);
    require(&file)?;
    let root = read_pickle(&file)?;
    if !matches!(root, Py::Dict(_)) {
        return Err(DataError::BadSource { path: file, reason: format!("top level is {}, not a dict", root.a_kind()) });
    }
    let mut notes = Vec::new();
    let mut parts = Vec::new();
    let mut stored: Vec<Vec<Vec<usize>>> = Vec::new();
    for name in ["train", "valid", "test"] {
        let (s, dropped, shapes) = split(&file, &root, name)?;
        if dropped > 0 {
            notes.push(format!("{}: dropped {dropped} `{name}` samples with all-zero text", file.display()));
        }
        // One model serves every split: a modality's feature width must agree across them.
        for (m, key) in ["audio", "vision", "text"].into_iter().enumerate() {
            let (width, first) = (shapes[m][2], stored.first().map(|s| s[m][2]));
            if let Some(train_width) = first.filter(|&w| w != width) {
                return Err(DataError::BadShape {
                    path: file.clone(),
                    shape: shapes[m].clone(),
                    reason: format!(
                        "`{name}/{key}` has {width} features per step but `train/{key}` has {train_width}; \
                         every split of a modality must have the same feature width"
                    ),
                });
            }
        }
        stored.push(shapes);
        parts.push(s);
    }
    let test = parts.pop().expect("3 splits");
    let validation = parts.pop().expect("3 splits");
    let train = parts.pop().expect("3 splits");
    Ok(LoadedDataset {
        id: super::DatasetId::UrFunny,
        modalities: ModalitySet::new(MODALITIES),
        classes: CLASSES,
        train,
        validation,
        dep: Some(test.clone()),
        test,
        segment_labels: None,
        notes,
        word_vectors: None,
    })
}
