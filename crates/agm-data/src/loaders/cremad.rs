//! CREMA-D as OGM-GE / AGM prepare it: `CREMAD/{train,test}.csv` (`clip,EMO`, no header, BOM
//! and CRLF accepted), `Audio/<clip>.wav` → log-magnitude STFT `[1,257,188]`, and one frame of
//! `Image-01-FPS/<clip>/` → `[3,1,S,S]` ImageNet-normalised (docs/datasets.md).
//!
//! A precomputed spectrogram `Spectrogram/<clip>.npy` (`[257,188]`, any float dtype) is used
//! instead of the wav when present. Frames are stored resized (the reference's eval transform);
//! a run draws the reference's random resized crop and flip on the training frames
//! (`crate::augment`), from the resized frame (docs/known-differences.md).

use std::path::{Path, PathBuf};

use agm_core::ModalitySet;

use super::array::NpyFile;
use super::audio::{cremad_spectrogram, N_BINS, N_FRAMES};
use super::frames::{list_frames, load_frame, reference_frame_index};
use super::splits::{carve, ninety, validation_for, CREMAD_VALIDATION};
use super::{io_err, require, LoadOptions, LoadedDataset};
use crate::dataset::SplitTensors;
use crate::error::{DataError, Result};

/// Number of emotion classes ([`CLASS_NAMES`]).
pub const CLASSES: usize = 6;
/// AGM train rows when all 6,698 train.csv rows are present.
pub const REAL_TRAIN_ROWS: usize = 6_028;
/// Rows of the release's `train.csv` and `test.csv` (OGM-GE's split), which published numbers use.
pub const RELEASE_ROWS: (usize, usize) = (6_698, 744);
/// `class_dict` of the reference.
pub const CLASS_NAMES: [&str; 6] = ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"];

/// One csv row whose media exist.
#[derive(Clone, Debug, PartialEq)]
pub struct Clip {
    /// Clip name (the csv's first column): the file stem under `Audio/` and `Spectrogram/`, and the
    /// folder under `Image-01-FPS/`.
    pub id: String,
    /// Emotion class, an index into [`CLASS_NAMES`].
    pub label: u32,
    /// `Audio/<id>.wav`; it may be absent when `Spectrogram/<id>.npy` exists.
    pub wav: PathBuf,
    /// The jpeg of `Image-01-FPS/<id>/` that the reference picks
    /// ([`reference_frame_index`]).
    pub frame: PathBuf,
    /// 1-based csv line, for messages.
    pub line: usize,
}

/// Parses a split csv. Rows with missing media are skipped (and reported in `skipped`) unless
/// `strict`; a frame folder without jpg files is always an error.
pub fn read_split(root: &Path, csv: &Path, strict: bool, skipped: &mut Vec<String>) -> Result<Vec<Clip>> {
    require(csv)?;
    let bytes = std::fs::read(csv).map_err(|e| io_err(csv, e))?;
    let mut out = Vec::new();
    for (line, id, label) in parse_split_csv(&bytes, csv)? {
        let csv_err = |reason: String| DataError::Csv { path: csv.to_path_buf(), line, reason };
        let wav = root.join("Audio").join(format!("{id}.wav"));
        let spec = root.join("Spectrogram").join(format!("{id}.npy"));
        let dir = root.join("Image-01-FPS").join(&id);
        let audio_ok = wav.is_file() || spec.is_file();
        if !audio_ok || !dir.is_dir() {
            let missing = if !audio_ok { wav } else { dir };
            if strict {
                return Err(csv_err(format!("clip {id}: {} does not exist", missing.display())));
            }
            skipped.push(format!("{}:{line}: skipped {id}: {} does not exist", csv.display(), missing.display()));
            continue;
        }
        let frames = list_frames(&dir)?;
        if frames.is_empty() {
            return Err(csv_err(format!("clip {id}: frame folder {} holds no jpg frame", dir.display())));
        }
        let frame = frames[reference_frame_index(frames.len())].clone();
        out.push(Clip { id, label, wav, frame, line });
    }
    Ok(out)
}

/// The `(line, clip, label)` rows of a split csv's bytes (`clip,EMOTION`, no header, BOM and
/// CRLF accepted); `csv` only labels errors.
pub fn parse_split_csv(bytes: &[u8], csv: &Path) -> Result<Vec<(usize, String, u32)>> {
    let text = std::str::from_utf8(bytes).map_err(|e| DataError::Csv {
        path: csv.to_path_buf(),
        line: 1 + bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count(),
        reason: "not utf-8 text; save the csv as utf-8".into(),
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let row = raw.trim_end_matches('\r').trim();
        if row.is_empty() {
            continue;
        }
        let csv_err = |reason: String| DataError::Csv { path: csv.to_path_buf(), line, reason };
        let (id, emo) = row.split_once(',').ok_or_else(|| csv_err(format!("expected `clip,EMOTION`, got {row:?}")))?;
        let (id, emo) = (id.trim(), emo.trim());
        // A clip id becomes a file name under Audio/ and Image-01-FPS/: no path separators.
        if id.is_empty() || id.contains(['/', '\\']) || id == ".." {
            return Err(csv_err(format!("clip id {id:?} must be a plain file name")));
        }
        let label = CLASS_NAMES
            .iter()
            .position(|c| *c == emo)
            .ok_or_else(|| csv_err(format!("label {emo:?} is not one of {CLASS_NAMES:?}")))? as u32;
        out.push((line, id.to_string(), label));
    }
    Ok(out)
}

fn spectrogram(root: &Path, clip: &Clip) -> Result<Vec<f32>> {
    let spec = root.join("Spectrogram").join(format!("{}.npy", clip.id));
    if spec.is_file() {
        let f = NpyFile::open(&spec)?;
        if f.shape() != [N_BINS, N_FRAMES] && f.shape() != [1, N_BINS, N_FRAMES] {
            return Err(DataError::BadShape {
                path: spec,
                shape: f.shape().to_vec(),
                reason: format!("a precomputed spectrogram must be [{N_BINS}, {N_FRAMES}]"),
            });
        }
        let mut v = Vec::new();
        f.read_rows_f32(0, f.rows(), 1.0, &mut v);
        return Ok(v);
    }
    cremad_spectrogram(&clip.wav)
}

fn gather(root: &Path, clips: &[&Clip], size: u32) -> Result<SplitTensors> {
    let mut audio = Vec::with_capacity(clips.len() * N_BINS * N_FRAMES);
    let mut visual = Vec::with_capacity(clips.len() * 3 * (size * size) as usize);
    for c in clips {
        audio.extend(spectrogram(root, c)?);
        visual.extend(load_frame(&c.frame, size)?);
    }
    let s = size as usize;
    Ok(SplitTensors::new(
        vec![audio, visual],
        vec![vec![1, N_BINS, N_FRAMES], vec![3, 1, s, s]],
        clips.iter().map(|c| c.label).collect(),
    ))
}

/// Loads CREMA-D: splits as AV-MNIST (AGM's 90 % rule on the present rows, seeded validation
/// carved from train, dep = last 10 % of both csv files).
pub fn load(root: &Path, opts: &LoadOptions) -> Result<LoadedDataset> {
    let mut notes = Vec::new();
    let train_rows = read_split(root, &root.join("CREMAD/train.csv"), opts.strict_media, &mut notes)?;
    let test_rows = read_split(root, &root.join("CREMAD/test.csv"), opts.strict_media, &mut notes)?;
    let (agm_train, agm_test) = (ninety(train_rows.len()), ninety(test_rows.len()));
    let val = validation_for(agm_train, opts.validation_seed, CREMAD_VALIDATION, REAL_TRAIN_ROWS);
    let (train_pos, val_pos) = carve(agm_train, &val);
    let pick = |v: &[usize]| v.iter().map(|&i| &train_rows[i]).collect::<Vec<_>>();
    let size = opts.frame_size;
    let train = gather(root, &pick(&train_pos), size)?;
    let validation = gather(root, &pick(&val_pos), size)?;
    let test = gather(root, &test_rows[..agm_test].iter().collect::<Vec<_>>(), size)?;
    let dep: Vec<&Clip> = train_rows[agm_train..].iter().chain(&test_rows[agm_test..]).collect();
    let dep = gather(root, &dep, size)?;
    Ok(LoadedDataset {
        id: super::DatasetId::CremaD,
        modalities: ModalitySet::new(["audio", "visual"]),
        classes: CLASSES,
        train,
        validation,
        test,
        dep: Some(dep),
        segment_labels: None,
        notes,
        word_vectors: None,
    })
}
