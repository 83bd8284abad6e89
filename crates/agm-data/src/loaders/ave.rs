//! AVE (AVE-ECCV18 / PSP features): `audio_feature.h5` `[N,10,128]`, `visual_feature.h5`
//! `[N,10,7,7,512]`, `right_labels.h5` `[N,10,29]` one-hot (28 = background), all under dataset
//! `avadataset`, and `{train,val,test}_order.h5` (dataset `order`, int row indices). No
//! normalisation (docs/datasets.md). These shapes are required exactly: they are the PSP
//! net's fixed inputs.
//!
//! The split labels are each video's event class (the lowest non-background class present, as
//! the reference's AVPS target uses; 28 if none); per-segment labels are in
//! [`super::SegmentLabels`]. The reference drops AVE's last partial batch in training and
//! evaluation; agm keeps every sample (docs/known-differences.md).

use std::path::Path;

use agm_core::ModalitySet;

use super::h5::H5Dataset;
use super::{LoadedDataset, SegmentLabels};
use crate::dataset::SplitTensors;
use crate::error::{DataError, Result};

/// Outputs per segment (28 events + background).
pub const CLASSES: usize = 29;
/// Class index of a segment with no event (background).
pub const BACKGROUND: u32 = 28;
/// One-second segments per video.
pub const SEGMENTS: usize = 10;
/// Per-segment feature shapes: VGGish audio, VGG-19 pool5 visual maps (the PSP net's inputs).
pub const AUDIO_FEATURES: [usize; 1] = [128];
/// Per-segment visual feature map: VGG-19 pool5, `[7, 7, 512]`.
pub const VISUAL_FEATURES: [usize; 3] = [7, 7, 512];
/// Rows of the release's train, val and test order files, which published numbers use.
pub const RELEASE_ROWS: [usize; 3] = [3_339, 402, 402];

fn order(root: &Path, name: &str, n_all: usize) -> Result<Vec<usize>> {
    let path = root.join(format!("{name}_order.h5"));
    let ds = H5Dataset::open(&path, "order")?;
    ds.all_i64()?
        .into_iter()
        .enumerate()
        .map(|(row, v)| {
            usize::try_from(v).ok().filter(|&i| i < n_all).ok_or_else(|| DataError::BadSource {
                path: path.clone(),
                reason: format!("order entry {row} = {v} is not a row index in 0..{n_all}"),
            })
        })
        .collect()
}

/// Segment labels `[N, segments]` from one-hot rows; each row must have exactly one maximum > 0.
fn segment_labels(ds: &H5Dataset) -> Result<(Vec<u32>, usize)> {
    let shape = ds.shape().to_vec();
    if shape.len() != 3 || shape[1] != SEGMENTS || shape[2] != CLASSES {
        return Err(DataError::BadShape {
            path: ds.path().to_path_buf(),
            shape,
            reason: format!(
                "labels must be [N, {SEGMENTS}, {CLASSES}]: one-hot per segment, class {BACKGROUND} = background \
                 (README.md, section Datasets)"
            ),
        });
    }
    let v = ds.all_f32()?;
    let mut out = Vec::with_capacity(shape[0] * shape[1]);
    for (r, row) in v.chunks_exact(CLASSES).enumerate() {
        let ones: Vec<usize> = row.iter().enumerate().filter(|(_, &x)| x != 0.0).map(|(i, _)| i).collect();
        // The one entry must be a positive number: a NaN or negative entry is no label.
        if ones.len() != 1 || !(row[ones[0]] > 0.0 && row[ones[0]].is_finite()) {
            let what = match ones.as_slice() {
                [i] => format!("its one non-zero entry, class {i}, is {}", row[*i]),
                _ => format!("{} non-zero entries", ones.len()),
            };
            return Err(DataError::BadSource {
                path: ds.path().to_path_buf(),
                reason: format!("row {} segment {} is not one-hot ({what})", r / shape[1], r % shape[1]),
            });
        }
        out.push(ones[0] as u32);
    }
    Ok((out, shape[1]))
}

fn gather(a: &H5Dataset, v: &H5Dataset, rows: &[usize]) -> Result<(Vec<f32>, Vec<f32>)> {
    let mut audio = Vec::new();
    let mut visual = Vec::new();
    for &i in rows {
        audio.extend(a.rows_f32(i, 1)?);
        visual.extend(v.rows_f32(i, 1)?);
    }
    Ok((audio, visual))
}

/// Loads AVE: train / validation (`val`) / test from the order files; no dep split.
pub fn load(root: &Path) -> Result<LoadedDataset> {
    let a = H5Dataset::open(&root.join("audio_feature.h5"), "avadataset")?;
    let v = H5Dataset::open(&root.join("visual_feature.h5"), "avadataset")?;
    let l = H5Dataset::open(&root.join("right_labels.h5"), "avadataset")?;
    // Labels first: their shape check guarantees the indexing below.
    let (seg, segments) = segment_labels(&l)?;
    let n = l.shape()[0];
    for (d, what, features) in [
        (&a, "audio features (VGGish)", &AUDIO_FEATURES[..]),
        (&v, "visual features (VGG-19 pool5)", &VISUAL_FEATURES[..]),
    ] {
        let want: Vec<usize> = [n, SEGMENTS].into_iter().chain(features.iter().copied()).collect();
        if d.shape() != want.as_slice() {
            let dims = |s: &[usize]| s.iter().map(usize::to_string).collect::<Vec<_>>().join(", ");
            return Err(DataError::BadShape {
                path: d.path().to_path_buf(),
                shape: d.shape().to_vec(),
                reason: format!(
                    "{what} must be [N, {}] with N = {n} rows like right_labels.h5 (README.md, section Datasets)",
                    dims(&want[1..])
                ),
            });
        }
    }
    let mut splits = Vec::new();
    let mut segs = Vec::new();
    for name in ["train", "val", "test"] {
        let rows = order(root, name, n)?;
        let (audio, visual) = gather(&a, &v, &rows)?;
        let mut labels = Vec::with_capacity(rows.len());
        let mut s = Vec::with_capacity(rows.len() * segments);
        for &i in &rows {
            let row = &seg[i * segments..(i + 1) * segments];
            labels.push(row.iter().copied().filter(|&c| c != BACKGROUND).min().unwrap_or(BACKGROUND));
            s.extend_from_slice(row);
        }
        splits.push(SplitTensors::new(
            vec![audio, visual],
            vec![a.shape()[1..].to_vec(), v.shape()[1..].to_vec()],
            labels,
        ));
        segs.push(s);
    }
    let test = splits.pop().expect("3");
    let validation = splits.pop().expect("3");
    let train = splits.pop().expect("3");
    let segment_labels = SegmentLabels {
        segments,
        test: segs.pop().expect("3"),
        validation: segs.pop().expect("3"),
        train: segs.pop().expect("3"),
    };
    Ok(LoadedDataset {
        id: super::DatasetId::Ave,
        modalities: ModalitySet::new(["audio", "visual"]),
        classes: CLASSES,
        train,
        validation,
        test,
        dep: None,
        segment_labels: Some(segment_labels),
        notes: Vec::new(),
        word_vectors: None,
    })
}
