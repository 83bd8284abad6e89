//! Loaders for the five AGM datasets, reading the files users have (docs/datasets.md), plus the
//! shared readers and a background prefetcher.
//!
//! [`load`] returns a [`LoadedDataset`]: train / validation / test (and `dep` where the
//! reference has it) as [`SplitTensors`], the [`ModalitySet`] and the class count.
//!
//! | id | modalities (order) | classes | validation | dep |
//! |---|---|---|---|---|
//! | `avmnist` | audio `[1,112,112]`, visual `[1,28,28]` (both /255) | 10 | seeded 10 % of train (shipped list) | last 10 % train ++ last 10 % test |
//! | `cremad` | audio `[1,257,188]` log-STFT, visual `[3,1,S,S]` ImageNet-normalised | 6 | seeded 10 % of train (shipped list) | as AV-MNIST |
//! | `urfunny` | audio `[T,81]`, visual `[T,371]`, text `[T,300]` | 2 | `valid` | `test` |
//! | `ave` | audio `[10,128]`, visual `[10,7,7,512]` | 29 per segment | `val` order file | none |
//! | `mosei` | audio `[60,80]`, text `[60]` token ids (pad 0) | 2 | `valid` | none |

pub mod array;
pub mod audio;
pub mod ave;
pub mod avmnist;
pub mod cremad;
pub mod frames;
pub mod h5;
pub mod mosei;
pub mod pickle;
pub mod prefetch;
pub mod splits;
pub mod urfunny;
pub mod validate;

use std::path::{Path, PathBuf};

use agm_core::ModalitySet;

use crate::dataset::SplitTensors;
use crate::error::{DataError, Result};

/// The five paper datasets, the embedded AV-Digits set and synthetic data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatasetId {
    /// AV-MNIST (`avmnist`): audio spectrograms and MNIST digits, 10 classes.
    AvMnist,
    /// CREMA-D (`cremad`): speech audio and face frames, 6 emotions.
    CremaD,
    /// UR-Funny (`urfunny`): audio, visual and text sequences; humour or not.
    UrFunny,
    /// AVE (`ave`): audio and visual features of ten one-second segments, 28 events and background.
    Ave,
    /// CMU-MOSEI (`mosei`): audio mel frames and text tokens; binary sentiment.
    Mosei,
    /// The embedded AV-Digits set ([`crate::av_digits`]); no files.
    AvDigits,
    /// Seeded random tensors of a model's input shapes ([`crate::synthetic`]); no files.
    Synthetic,
}

impl DatasetId {
    /// The five paper datasets, the ones read from files.
    pub const ALL: [DatasetId; 5] = [Self::AvMnist, Self::CremaD, Self::UrFunny, Self::Ave, Self::Mosei];

    /// The CLI id (`avmnist`, `cremad`, `urfunny`, `ave`, `mosei`, `av-digits`, `synthetic`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AvMnist => "avmnist",
            Self::CremaD => "cremad",
            Self::UrFunny => "urfunny",
            Self::Ave => "ave",
            Self::Mosei => "mosei",
            Self::AvDigits => "av-digits",
            Self::Synthetic => "synthetic",
        }
    }

    /// Whether the reference picks its best epoch on the test split (AV-MNIST and CREMA-D
    /// evaluate on the first 90 % of test every epoch); the others use their validation split.
    pub fn reference_selects_on_test(self) -> bool {
        matches!(self, Self::AvMnist | Self::CremaD)
    }

    /// Whether the `dep` split is the test split itself (UR-Funny, as the AGM reference defines
    /// it): then no training decision may read it.
    pub fn dep_is_test(self) -> bool {
        matches!(self, Self::UrFunny)
    }
}

impl std::str::FromStr for DatasetId {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        let k: String = s.chars().filter(|c| c.is_ascii_alphanumeric()).collect::<String>().to_ascii_lowercase();
        Ok(match k.as_str() {
            "avmnist" => Self::AvMnist,
            "cremad" => Self::CremaD,
            "urfunny" => Self::UrFunny,
            "ave" => Self::Ave,
            "mosei" | "cmumosei" => Self::Mosei,
            "synthetic" => Self::Synthetic,
            "avdigits" => Self::AvDigits,
            _ => return Err(DataError::UnknownDataset { name: s.to_string() }),
        })
    }
}

/// Options shared by the loaders.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Seed of the carved validation split (AV-MNIST, CREMA-D). The shipped index lists are for
    /// [`splits::VALIDATION_SEED`]; another seed recomputes them.
    pub validation_seed: u64,
    /// CREMA-D frame side (the reference uses 224).
    pub frame_size: u32,
    /// CREMA-D: a csv row whose wav or frame folder is missing is an error instead of being
    /// skipped (the reference skips it silently).
    pub strict_media: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { validation_seed: splits::VALIDATION_SEED, frame_size: 224, strict_media: false }
    }
}

/// Per-segment labels of AVE (`[n, 10]`, class 28 = background), per split.
#[derive(Clone, Debug, PartialEq)]
pub struct SegmentLabels {
    /// Segments per video, i.e. labels per sample (10 for AVE).
    pub segments: usize,
    /// Training split's labels, `segments` per video in sample order.
    pub train: Vec<u32>,
    /// Validation split's labels, laid out as `train`.
    pub validation: Vec<u32>,
    /// Test split's labels, laid out as `train`.
    pub test: Vec<u32>,
}

/// A loaded dataset: splits, modalities and classes.
#[derive(Clone, Debug)]
pub struct LoadedDataset {
    /// Which dataset this is.
    pub id: DatasetId,
    /// Modality names, in the order of every split's inputs.
    pub modalities: ModalitySet,
    /// Output classes (per segment for AVE).
    pub classes: usize,
    /// The training split.
    pub train: SplitTensors,
    /// Model selection uses this split only.
    pub validation: SplitTensors,
    /// The test split.
    pub test: SplitTensors,
    /// The competition-strength regression split, where the reference defines one.
    pub dep: Option<SplitTensors>,
    /// AVE only: per-segment labels (the split labels hold each video's event class).
    pub segment_labels: Option<SegmentLabels>,
    /// What the loader skipped or adjusted (rows with missing media, dropped samples…).
    pub notes: Vec<String>,
    /// Pretrained vectors for the text embedding, one row per token id (MOSEI's
    /// `train_glove.npy`, which the reference copies into its embedding).
    pub word_vectors: Option<WordVectors>,
}

/// A word-vector matrix `[rows, dim]`, row `i` for token id `i`.
#[derive(Clone, Debug, PartialEq)]
pub struct WordVectors {
    /// Number of rows, one per token id.
    pub rows: usize,
    /// Width of each vector (300 for MOSEI's GloVe vectors).
    pub dim: usize,
    /// The matrix, row-major: `rows × dim` values.
    pub values: Vec<f32>,
    /// The file they came from, for messages.
    pub source: std::path::PathBuf,
}

impl LoadedDataset {
    /// The split a method may hold out from training (G-Blending's blend weights, ReLearn's
    /// diagnosis): `dep`, unless it is the test split ([`DatasetId::dep_is_test`]).
    pub fn holdout(&self) -> Option<&SplitTensors> {
        self.dep.as_ref().filter(|_| !self.id.dep_is_test())
    }

    /// Keeps the modalities `names` (a model's, in its order) in every split; a uni-modal model
    /// keeps one of them.
    pub fn reorder_modalities(&mut self, names: &[&str]) -> Result<()> {
        let order = names
            .iter()
            .map(|n| {
                self.modalities.index_of(n).ok_or_else(|| DataError::InvalidConfig {
                    option: "model".into(),
                    reason: format!(
                        "the model needs modality `{n}` but the dataset has {}",
                        self.modalities.names().join(", ")
                    ),
                })
            })
            .collect::<Result<Vec<usize>>>()?;
        self.modalities = ModalitySet::new(names.iter().copied());
        for split in [&mut self.train, &mut self.validation, &mut self.test].into_iter().chain(self.dep.as_mut()) {
            *split = split.select_modalities(&order);
        }
        Ok(())
    }
}

/// How the data at `path` is smaller than the public release the published numbers come from,
/// read from its index files alone: AV-MNIST's label arrays, CREMA-D's split lists, AVE's order
/// files. `None` where it is not smaller, and for UR-Funny and MOSEI, whose release sizes agm
/// does not pin.
pub fn smaller_than_release(id: DatasetId, path: &Path) -> Result<Option<String>> {
    let (name, have, release, what): (&str, Vec<usize>, Vec<usize>, &str) = match id {
        DatasetId::AvMnist => {
            let files = avmnist::AvMnistFiles::open(path)?;
            let (have, release) = ([files.train_labels.len(), files.test_labels.len()], avmnist::RELEASE_ROWS);
            ("AV-MNIST", have.to_vec(), vec![release.0, release.1], "train / test rows")
        }
        DatasetId::CremaD => {
            let rows = |name: &str| -> Result<usize> {
                let csv = path.join("CREMAD").join(name);
                let bytes = std::fs::read(&csv).map_err(|e| io_err(&csv, e))?;
                Ok(cremad::parse_split_csv(&bytes, &csv)?.len())
            };
            let release = cremad::RELEASE_ROWS;
            let have = vec![rows("train.csv")?, rows("test.csv")?];
            ("CREMA-D", have, vec![release.0, release.1], "train.csv / test.csv rows")
        }
        DatasetId::Ave => {
            let rows = ["train", "val", "test"]
                .iter()
                .map(|name| {
                    Ok(h5::H5Dataset::open(&path.join(format!("{name}_order.h5")), "order")?.shape().iter().product())
                })
                .collect::<Result<Vec<usize>>>()?;
            ("AVE", rows, ave::RELEASE_ROWS.to_vec(), "train / val / test videos")
        }
        _ => return Ok(None),
    };
    let shown = |v: &[usize]| v.iter().map(usize::to_string).collect::<Vec<_>>().join(" / ");
    Ok(have
        .iter()
        .zip(&release)
        .any(|(h, r)| h < r)
        .then(|| format!("the data holds {} {what}; the released {name} has {}", shown(&have), shown(&release))))
}

/// Loads dataset `id` from `path` (a folder; for UR-Funny the pickle file, or a folder holding
/// `humor.pkl`), then checks it with [`validate::validate_loaded`]: no empty split, no
/// non-finite input. `cargo xtask data check` runs the same check.
pub fn load(id: DatasetId, path: &Path, opts: &LoadOptions) -> Result<LoadedDataset> {
    require_all(id, path)?;
    let data = load_unchecked(id, path, opts)?;
    validate::validate_loaded(&data, path)?;
    Ok(data)
}

fn load_unchecked(id: DatasetId, path: &Path, opts: &LoadOptions) -> Result<LoadedDataset> {
    match id {
        DatasetId::AvMnist => avmnist::load(path, opts),
        DatasetId::CremaD => cremad::load(path, opts),
        DatasetId::UrFunny => urfunny::load(path),
        DatasetId::Ave => ave::load(path),
        DatasetId::Mosei => mosei::load(path),
        DatasetId::Synthetic | DatasetId::AvDigits => Err(DataError::UnknownDataset {
            name: format!("{} (it has no files: it is generated or embedded)", id.as_str()),
        }),
    }
}

/// The files and folders dataset `id` needs under `root` (UR-Funny: the pickle, or a folder
/// holding `humor.pkl`). Per-sample media (CREMA-D's clips and frames) are checked as they load.
pub fn required_paths(id: DatasetId, root: &Path) -> Vec<PathBuf> {
    let under = |names: &[&str]| names.iter().map(|n| root.join(n)).collect();
    match id {
        DatasetId::AvMnist => under(&[
            "train_labels.npy",
            "test_labels.npy",
            "image/train_data.npy",
            "image/test_data.npy",
            "audio/train_data.npy",
            "audio/test_data.npy",
        ]),
        DatasetId::CremaD => under(&["CREMAD/train.csv", "CREMAD/test.csv", "Image-01-FPS"]),
        DatasetId::UrFunny => vec![urfunny::pickle_path(root)],
        DatasetId::Ave => under(&[
            "audio_feature.h5",
            "visual_feature.h5",
            "right_labels.h5",
            "train_order.h5",
            "val_order.h5",
            "test_order.h5",
        ]),
        DatasetId::Mosei => ["train", "valid", "test"]
            .iter()
            .flat_map(|s| ["sentences", "mels", "sentiment"].map(|k| root.join(format!("{s}_{k}.p"))))
            .collect(),
        DatasetId::AvDigits | DatasetId::Synthetic => Vec::new(),
    }
}

/// Fails listing every path of [`required_paths`] that is missing, all at once.
pub fn require_all(id: DatasetId, root: &Path) -> Result<()> {
    let paths = required_paths(id, root);
    if !paths.is_empty() && !root.exists() {
        return Err(DataError::NotFound { path: root.to_path_buf() });
    }
    let missing: Vec<String> =
        paths.iter().filter(|p| !p.exists()).map(|p| p.strip_prefix(root).unwrap_or(p).display().to_string()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if root.is_file() && missing.len() == paths.len() {
        return Err(DataError::NotAFolder { path: root.to_path_buf() });
    }
    let listing = match missing.as_slice() {
        [one] => one.clone(),
        many => format!("these {} files: {}", many.len(), many.join(", ")),
    };
    Err(DataError::MissingFiles { root: root.to_path_buf(), listing })
}

/// The error of a failed read of the file `path`: [`DataError::IsDirectory`] when a directory
/// stands there (the OS says only "Is a directory" or, for a memory map, "No such device"),
/// else [`DataError::Io`].
pub(crate) fn io_err(path: &Path, source: std::io::Error) -> DataError {
    if path.is_dir() {
        return DataError::IsDirectory { path: path.to_path_buf() };
    }
    DataError::Io { path: path.to_path_buf(), cause: source }
}

/// Fails with [`DataError::IsDirectory`] when `path`, where a file is expected, is a directory.
pub(crate) fn require_not_dir(path: &Path) -> Result<()> {
    if path.is_dir() {
        Err(DataError::IsDirectory { path: path.to_path_buf() })
    } else {
        Ok(())
    }
}

/// Fails with an `Io` (not found) error naming `path` when it does not exist.
pub(crate) fn require(path: &Path) -> Result<()> {
    if path.exists() {
        Ok(())
    } else {
        Err(io_err(path, std::io::Error::new(std::io::ErrorKind::NotFound, "file not found")))
    }
}
