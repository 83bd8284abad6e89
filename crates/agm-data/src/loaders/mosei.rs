//! CMU-MOSEI as the UMONS pickles hold it: `{split}_sentences.p` (key → list of words),
//! `{split}_mels.p` (key → `[T,80]` with `T ≥ 1`; another shape is an error naming the key),
//! `{split}_sentiment.p` (key → score in [-3,3], float, numpy scalar or 1-element array),
//! optional `token_to_ix.pkl` (docs/datasets.md).
//!
//! Items: text = 60 token ids (0 = pad, unknown = 1) stored as `f32`, audio = the first 60 mel
//! frames zero-padded `[60,80]`; label = binary sentiment (`s < 0` → 0 else 1). The reference
//! takes its key order from hard-coded lists in `tokenizer.py`; here the order of
//! `{split}_sentences.p` is used and keys missing from another file are skipped (and noted).
//! The vocabulary is `token_to_ix.pkl` when present, else built from train as the reference
//! does (`{'UNK': 1}`, each new word gets `len(dict)`, so the first word shares id 1 with UNK).
//! `train_glove.npy` (`[V, 300]`, row `i` for id `i` of `token_to_ix.pkl`, the reference's
//! cached GloVe matrix) becomes the dataset's word vectors, which the reference copies into its
//! embedding; without it the embedding keeps its random initialisation.

use std::collections::HashMap;
use std::path::Path;

use agm_core::ModalitySet;

use super::pickle::{read_pickle, Py};
use super::{require, LoadedDataset, WordVectors};
use crate::dataset::SplitTensors;
use crate::error::{DataError, Result};

/// Binary sentiment: 0 for a score below 0, else 1.
pub const CLASSES: usize = 2;
/// Steps per sample, for text tokens and mel frames alike: longer ones are cut, shorter padded.
pub const SEQ_LEN: usize = 60;
/// Token id of padding.
pub const PAD_ID: u32 = 0;
/// Token id of an unknown word. A vocabulary built from train gives it to the first word too,
/// as the reference does.
pub const UNK_ID: u32 = 1;
/// Mel bands per frame (the MAT net's audio width).
pub const MEL_BANDS: usize = 80;

/// The reference's `clean`: lower-case; delete `.,'!?"()*#:;`; `-` and `/` become spaces (the
/// word stays one token).
pub fn clean(w: &str) -> String {
    w.to_lowercase()
        .chars()
        .filter(|c| !".,'!?\"()*#:;".contains(*c))
        .map(|c| if c == '-' || c == '/' { ' ' } else { c })
        .collect()
}

fn dict<'a>(path: &Path, v: &'a Py) -> Result<&'a [(Py, Py)]> {
    match v {
        Py::Dict(d) => Ok(d),
        other => Err(DataError::BadSource {
            path: path.to_path_buf(),
            reason: format!("top level is {}, not a dict", other.a_kind()),
        }),
    }
}

fn key_str(k: &Py) -> Option<&str> {
    if let Py::Str(s) = k {
        Some(s)
    } else {
        None
    }
}

fn words(path: &Path, key: &str, v: &Py) -> Result<Vec<String>> {
    match v {
        Py::List(items) | Py::Tuple(items) => Ok(items
            .iter()
            .filter_map(|w| if let Py::Str(s) = w { Some(clean(s)) } else { None })
            .filter(|w| !w.is_empty())
            .collect()),
        other => Err(DataError::BadSource {
            path: path.to_path_buf(),
            reason: format!("sentence of `{key}` is {}, not a list of words", other.a_kind()),
        }),
    }
}

struct Raw {
    keys: Vec<String>,
    words: Vec<Vec<String>>,
    mels: Vec<(usize, usize, Vec<f32>)>,
    sentiment: Vec<f64>,
}

fn read_split(root: &Path, split: &str, notes: &mut Vec<String>) -> Result<Raw> {
    let sp = root.join(format!("{split}_sentences.p"));
    let mp = root.join(format!("{split}_mels.p"));
    let lp = root.join(format!("{split}_sentiment.p"));
    for p in [&sp, &mp, &lp] {
        require(p)?;
    }
    let (s, m, l) = (read_pickle(&sp)?, read_pickle(&mp)?, read_pickle(&lp)?);
    let (s, m, l) = (dict(&sp, &s)?, dict(&mp, &m)?, dict(&lp, &l)?);
    let mels: HashMap<&str, &Py> = m.iter().filter_map(|(k, v)| Some((key_str(k)?, v))).collect();
    let sent: HashMap<&str, &Py> = l.iter().filter_map(|(k, v)| Some((key_str(k)?, v))).collect();
    let mut raw = Raw { keys: Vec::new(), words: Vec::new(), mels: Vec::new(), sentiment: Vec::new() };
    for (k, v) in s {
        let Some(key) = key_str(k) else { continue };
        let (Some(mel), Some(y)) = (mels.get(key), sent.get(key)) else {
            notes.push(format!(
                "{split}: skipped key {key}: missing from {}",
                if mels.contains_key(key) { lp.display() } else { mp.display() }
            ));
            continue;
        };
        let mel = match mel {
            Py::Array(a) if a.shape.len() == 2 && a.shape[0] > 0 && a.shape[1] == MEL_BANDS => {
                (a.shape[0], a.shape[1], a.to_f32())
            }
            Py::Array(a) => {
                return Err(DataError::BadShape {
                    path: mp.clone(),
                    shape: a.shape.clone(),
                    reason: format!(
                        "mels of `{key}` must be [T, {MEL_BANDS}]: T >= 1 frames of {MEL_BANDS} mel bands \
                         (README.md, section Datasets)"
                    ),
                })
            }
            other => {
                return Err(DataError::BadSource {
                    path: mp.clone(),
                    reason: format!("mels of `{key}` are {}, not a [T, {MEL_BANDS}] numpy array", other.a_kind()),
                })
            }
        };
        let y = y.as_f64().ok_or_else(|| DataError::BadSource {
            path: lp.clone(),
            reason: format!("sentiment of `{key}` is {}, not a number", y.a_kind()),
        })?;
        if !(-3.0..=3.0).contains(&y) {
            return Err(DataError::BadSource {
                path: lp.clone(),
                reason: format!("sentiment of `{key}` = {y} is outside [-3, 3]"),
            });
        }
        raw.keys.push(key.to_string());
        raw.words.push(words(&sp, key, v)?);
        raw.mels.push(mel);
        raw.sentiment.push(y);
    }
    Ok(raw)
}

/// The vocabulary: `token_to_ix.pkl` if present, else built from the train words.
fn vocabulary(root: &Path, train: &Raw) -> Result<HashMap<String, u32>> {
    let p = root.join("token_to_ix.pkl");
    if p.is_file() {
        let v = read_pickle(&p)?;
        let entries = dict(&p, &v)?;
        // The text embedding allocates one row per id, so ids must be dense: a stray 4e9
        // would ask for terabytes.
        let max_id = entries.len() as u64 + crate::limits::TOKEN_ID_SLACK;
        return entries
            .iter()
            .map(|(k, v)| match (k, v) {
                (Py::Str(k), Py::Int(i)) if (0..=max_id as i64).contains(i) => Ok((k.clone(), *i as u32)),
                (Py::Str(k), Py::Int(i)) => Err(DataError::BadSource {
                    path: p.clone(),
                    reason: format!(
                        "token `{k}` has id {i}, outside 0..={max_id} for {} entries; ids must be dense, so \
                         rebuild token_to_ix.pkl (or delete it to build the vocabulary from train)",
                        entries.len()
                    ),
                }),
                _ => Err(DataError::BadSource {
                    path: p.clone(),
                    reason: "token_to_ix must map str to non-negative int".into(),
                }),
            })
            .collect();
    }
    let mut vocab: HashMap<String, u32> = HashMap::from([("UNK".to_string(), UNK_ID)]);
    for w in train.words.iter().flatten() {
        if !vocab.contains_key(w) {
            let id = vocab.len() as u32;
            vocab.insert(w.clone(), id);
        }
    }
    Ok(vocab)
}

fn tensors(raw: &Raw, vocab: &HashMap<String, u32>, mel_width: usize) -> SplitTensors {
    let n = raw.keys.len();
    let mut text = Vec::with_capacity(n * SEQ_LEN);
    let mut audio = Vec::with_capacity(n * SEQ_LEN * mel_width);
    for i in 0..n {
        let mut ids: Vec<f32> =
            raw.words[i].iter().take(SEQ_LEN).map(|w| *vocab.get(w).unwrap_or(&UNK_ID) as f32).collect();
        ids.resize(SEQ_LEN, PAD_ID as f32);
        text.extend(ids);
        let (t, w, v) = &raw.mels[i];
        let keep = (*t).min(SEQ_LEN);
        audio.extend_from_slice(&v[..keep * w]);
        audio.extend(std::iter::repeat_n(0.0, (SEQ_LEN - keep) * w));
    }
    let labels = raw.sentiment.iter().map(|&s| if s < 0.0 { 0 } else { 1 }).collect();
    SplitTensors::new(vec![audio, text], vec![vec![SEQ_LEN, mel_width], vec![SEQ_LEN]], labels)
}

/// Loads MOSEI (binary sentiment): train / validation (`valid`) / test; no dep split.
/// Modalities: audio `[60, 80]`, text `[60]` (token ids as `f32`).
pub fn load(root: &Path) -> Result<LoadedDataset> {
    let mut notes = Vec::new();
    let train = read_split(root, "train", &mut notes)?;
    let valid = read_split(root, "valid", &mut notes)?;
    let test = read_split(root, "test", &mut notes)?;
    let vocab = vocabulary(root, &train)?;
    let word_vectors = word_vectors(root, &vocab)?;
    if word_vectors.is_none() {
        notes.push(
            "no train_glove.npy: the text embedding starts random, where the reference copies GloVe vectors \
             into it (put the reference's cached token_to_ix.pkl and train_glove.npy in the folder)"
                .into(),
        );
    }
    Ok(LoadedDataset {
        id: super::DatasetId::Mosei,
        modalities: ModalitySet::new(["audio", "text"]),
        classes: CLASSES,
        // `read_split` refused every key whose mels are not [T, 80].
        train: tensors(&train, &vocab, MEL_BANDS),
        validation: tensors(&valid, &vocab, MEL_BANDS),
        test: tensors(&test, &vocab, MEL_BANDS),
        dep: None,
        segment_labels: None,
        notes,
        word_vectors,
    })
}

/// `train_glove.npy`, when present: 2-D float, finite, a row for every id of the vocabulary,
/// which must then come from `token_to_ix.pkl` (the rows follow its ids).
fn word_vectors(root: &Path, vocab: &HashMap<String, u32>) -> Result<Option<WordVectors>> {
    let path = root.join("train_glove.npy");
    if !path.exists() {
        return Ok(None);
    }
    let bad = |reason: String| DataError::BadSource { path: path.clone(), reason };
    if !root.join("token_to_ix.pkl").is_file() {
        return Err(bad(
            "its rows follow the ids of token_to_ix.pkl, which is missing: put the token_to_ix.pkl written with \
             it beside it, or remove train_glove.npy to train the embedding from a random start"
                .into(),
        ));
    }
    let file = super::array::NpyFile::open(&path)?;
    let &[rows, dim] = file.shape() else {
        return Err(bad(format!("shape {:?}, expected [vocabulary, 300]", file.shape())));
    };
    if file.dtype().is_integer() || rows == 0 || dim == 0 {
        return Err(bad(format!("{:?} of shape [{rows}, {dim}], expected float [vocabulary, 300]", file.dtype())));
    }
    let needed = vocab.values().copied().max().map_or(0, |m| m as usize + 1);
    if rows < needed {
        return Err(bad(format!(
            "{rows} rows, but token_to_ix.pkl has ids up to {}; write both files again from the same vocabulary",
            needed - 1
        )));
    }
    let mut values = Vec::with_capacity(rows * dim);
    file.read_rows_f32(0, rows, 1.0, &mut values);
    if let Some(at) = values.iter().position(|v| !v.is_finite()) {
        return Err(bad(format!("row {} holds {}", at / dim, values[at])));
    }
    Ok(Some(WordVectors { rows, dim, values, source: path }))
}

/// The vocabulary size the text embedding needs (max id + 1).
pub fn vocab_size(root: &Path) -> Result<usize> {
    let mut notes = Vec::new();
    let train = read_split(root, "train", &mut notes)?;
    Ok(vocabulary(root, &train)?.values().copied().max().map_or(2, |m| m as usize + 1))
}
