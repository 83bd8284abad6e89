//! AV-MNIST (MFAS / MultiBench release): `image/{train,test}_data.npy`,
//! `audio/{train,test}_data.npy`, `{train,test}_labels.npy`, any numeric dtype (little-endian,
//! C order), read through memory maps. Images are `[N, 784]`, spectrograms `[N, H, W]` or
//! `[N, 1, H, W]` (`112 × 112` in the release), labels `[N]` or `[N, 1]`. Items are
//! `audio/255 → [1,H,W]`, `image/255 → [1,28,28]` (docs/datasets.md).

use std::path::Path;

use agm_core::ModalitySet;

use super::array::NpyFile;
use super::splits::{carve, ninety, validation_for, AVMNIST_VALIDATION};
use super::{require, LoadOptions, LoadedDataset};
use crate::dataset::SplitTensors;
use crate::error::{DataError, Result};

/// Number of classes (digits 0 to 9).
pub const CLASSES: usize = 10;
/// AGM train rows of the real release (`int(0.9 * 60000)`).
pub const REAL_TRAIN_ROWS: usize = 54_000;
/// Train and test rows of the released AV-MNIST (MultiBench's), which published numbers use.
pub const RELEASE_ROWS: (usize, usize) = (60_000, 10_000);

/// The six files of one AV-MNIST folder, opened and checked.
pub struct AvMnistFiles {
    /// `image/train_data.npy`, `[N, 784]`.
    pub train_image: NpyFile,
    /// `image/test_data.npy`, `[N, 784]`.
    pub test_image: NpyFile,
    /// `audio/train_data.npy`, `[N, H, W]` or `[N, 1, H, W]`.
    pub train_audio: NpyFile,
    /// `audio/test_data.npy`, the same per-sample shape as `train_audio`.
    pub test_audio: NpyFile,
    /// `train_labels.npy`, one class in 0..10 per train row.
    pub train_labels: Vec<u32>,
    /// `test_labels.npy`, one class in 0..10 per test row.
    pub test_labels: Vec<u32>,
}

fn open(path: &Path) -> Result<NpyFile> {
    require(path)?;
    NpyFile::open(path)
}

fn labels(path: &Path) -> Result<Vec<u32>> {
    let f = open(path)?;
    if f.shape().len() != 1 && !(f.shape().len() == 2 && f.shape()[1] == 1) {
        return Err(DataError::BadShape {
            path: path.to_path_buf(),
            shape: f.shape().to_vec(),
            reason: "labels must be [N] or [N, 1]".into(),
        });
    }
    let a = f.to_array();
    a.to_f64()
        .into_iter()
        .enumerate()
        .map(|(row, v)| {
            if v.fract() == 0.0 && v >= 0.0 && (v as usize) < CLASSES {
                Ok(v as u32)
            } else {
                Err(DataError::LabelOutOfRange { path: path.to_path_buf(), row, label: v, classes: CLASSES })
            }
        })
        .collect()
}

fn check_rows(f: &NpyFile, n: usize, what: &str) -> Result<()> {
    if f.rows() != n || f.shape().len() < 2 {
        return Err(DataError::BadShape {
            path: f.path().to_path_buf(),
            shape: f.shape().to_vec(),
            reason: format!("expected {n} rows ({what}) and at least 2 dimensions"),
        });
    }
    Ok(())
}

/// Images must be `[N, 784]`: one row of 28×28 pixels per sample, as MultiBench ships them.
fn check_image(f: &NpyFile) -> Result<()> {
    if f.shape().len() != 2 || f.shape()[1] != 784 {
        return Err(DataError::BadShape {
            path: f.path().to_path_buf(),
            shape: f.shape().to_vec(),
            reason: "images must be [N, 784]: one row of 28x28 = 784 pixels per sample (README.md, section Datasets)"
                .into(),
        });
    }
    Ok(())
}

/// Spectrograms must be `[N, H, W]` or `[N, 1, H, W]` with `H, W ≥ 1` (`[N, 112, 112]` in the
/// release; the ResNet takes other sizes).
fn check_audio(f: &NpyFile) -> Result<()> {
    let s = f.shape();
    let plane = match s.len() {
        3 => &s[1..],
        4 if s[1] == 1 => &s[2..],
        _ => &[][..],
    };
    if plane.len() != 2 || plane.contains(&0) {
        return Err(DataError::BadShape {
            path: f.path().to_path_buf(),
            shape: s.to_vec(),
            reason: "audio must be [N, 112, 112] (or [N, 1, 112, 112]): one H x W spectrogram per sample, \
                     with H and W at least 1 (README.md, section Datasets)"
                .into(),
        });
    }
    Ok(())
}

impl AvMnistFiles {
    /// Opens and validates the folder (shapes agree, labels in 0..10).
    pub fn open(root: &Path) -> Result<Self> {
        let train_labels = labels(&root.join("train_labels.npy"))?;
        let test_labels = labels(&root.join("test_labels.npy"))?;
        let train_image = open(&root.join("image/train_data.npy"))?;
        let test_image = open(&root.join("image/test_data.npy"))?;
        let train_audio = open(&root.join("audio/train_data.npy"))?;
        let test_audio = open(&root.join("audio/test_data.npy"))?;
        check_rows(&train_image, train_labels.len(), "as train_labels.npy")?;
        check_rows(&train_audio, train_labels.len(), "as train_labels.npy")?;
        check_rows(&test_image, test_labels.len(), "as test_labels.npy")?;
        check_rows(&test_audio, test_labels.len(), "as test_labels.npy")?;
        for f in [&train_image, &test_image] {
            check_image(f)?;
        }
        for f in [&train_audio, &test_audio] {
            check_audio(f)?;
        }
        if train_audio.shape()[1..] != test_audio.shape()[1..] {
            return Err(DataError::BadShape {
                path: test_audio.path().to_path_buf(),
                shape: test_audio.shape().to_vec(),
                reason: format!("audio rows differ from audio/train_data.npy {:?}", train_audio.shape()),
            });
        }
        Ok(Self { train_image, test_image, train_audio, test_audio, train_labels, test_labels })
    }

    /// Per-sample audio shape `[1, ..]` (`[1, 112, 112]` for the real release).
    pub fn audio_shape(&self) -> Vec<usize> {
        let s = &self.train_audio.shape()[1..];
        if s.len() == 2 {
            vec![1, s[0], s[1]]
        } else {
            s.to_vec()
        }
    }
}

/// Gathers rows (train rows `< n_train` index the train files, the rest the test files).
fn gather(files: &AvMnistFiles, rows: &[(bool, usize)]) -> SplitTensors {
    let scale = 1.0 / 255.0;
    let mut audio = Vec::with_capacity(rows.len() * files.train_audio.row_len());
    let mut image = Vec::with_capacity(rows.len() * 784);
    let mut labels = Vec::with_capacity(rows.len());
    for &(test, i) in rows {
        let (a, im, l) = if test {
            (&files.test_audio, &files.test_image, &files.test_labels)
        } else {
            (&files.train_audio, &files.train_image, &files.train_labels)
        };
        a.read_rows_f32(i, 1, scale, &mut audio);
        im.read_rows_f32(i, 1, scale, &mut image);
        labels.push(l[i]);
    }
    SplitTensors::new(vec![audio, image], vec![files.audio_shape(), vec![1, 28, 28]], labels)
}

/// One AV-MNIST split served straight from the memory-mapped files: each batch converts only
/// its own rows (for the multi-GB release, instead of [`load`]'s in-memory [`SplitTensors`]).
/// Rows `(false, i)` index the train files, `(true, i)` the test files.
pub struct MappedSplit {
    files: std::sync::Arc<AvMnistFiles>,
    rows: Vec<(bool, usize)>,
}

impl MappedSplit {
    /// The four splits of [`load`] (train, validation, test, dep) without reading the arrays.
    pub fn splits(root: &Path, opts: &LoadOptions) -> Result<[MappedSplit; 4]> {
        let files = std::sync::Arc::new(AvMnistFiles::open(root)?);
        let (ntr, nte) = (files.train_labels.len(), files.test_labels.len());
        let (agm_train, agm_test) = (ninety(ntr), ninety(nte));
        let val = validation_for(agm_train, opts.validation_seed, AVMNIST_VALIDATION, REAL_TRAIN_ROWS);
        let (train_pos, val_pos) = carve(agm_train, &val);
        let mk = |rows: Vec<(bool, usize)>| MappedSplit { files: files.clone(), rows };
        Ok([
            mk(train_pos.iter().map(|&i| (false, i)).collect()),
            mk(val_pos.iter().map(|&i| (false, i)).collect()),
            mk((0..agm_test).map(|i| (true, i)).collect()),
            mk((agm_train..ntr).map(|i| (false, i)).chain((agm_test..nte).map(|i| (true, i))).collect()),
        ])
    }

    /// Labels in sample order.
    pub fn labels(&self) -> Vec<u32> {
        self.rows.iter().map(|&(t, i)| if t { self.files.test_labels[i] } else { self.files.train_labels[i] }).collect()
    }

    /// The whole split in memory.
    pub fn to_tensors(&self) -> SplitTensors {
        gather(&self.files, &self.rows)
    }
}

impl agm_core::BatchSource for MappedSplit {
    fn len(&self) -> usize {
        self.rows.len()
    }

    fn batch(&self, indices: &[usize], device: &candle_core::Device) -> candle_core::Result<agm_core::MultimodalBatch> {
        crate::dataset::check_indices(indices, self.rows.len())?;
        let rows: Vec<(bool, usize)> = indices.iter().map(|&i| self.rows[i]).collect();
        gather(&self.files, &rows).batch(&(0..rows.len()).collect::<Vec<_>>(), device)
    }
}

/// Loads AV-MNIST: train (AGM's first 90 % of train, minus the carved validation), validation,
/// test (first 90 % of test), dep (last 10 % of train ++ last 10 % of test).
pub fn load(root: &Path, opts: &LoadOptions) -> Result<LoadedDataset> {
    let files = AvMnistFiles::open(root)?;
    let (ntr, nte) = (files.train_labels.len(), files.test_labels.len());
    let (agm_train, agm_test) = (ninety(ntr), ninety(nte));
    let val = validation_for(agm_train, opts.validation_seed, AVMNIST_VALIDATION, REAL_TRAIN_ROWS);
    let (train_pos, val_pos) = carve(agm_train, &val);
    let rows = |v: &[usize]| v.iter().map(|&i| (false, i)).collect::<Vec<_>>();
    let train = gather(&files, &rows(&train_pos));
    let validation = gather(&files, &rows(&val_pos));
    let test = gather(&files, &(0..agm_test).map(|i| (true, i)).collect::<Vec<_>>());
    let dep_rows: Vec<(bool, usize)> =
        (agm_train..ntr).map(|i| (false, i)).chain((agm_test..nte).map(|i| (true, i))).collect();
    let dep = gather(&files, &dep_rows);
    Ok(LoadedDataset {
        id: super::DatasetId::AvMnist,
        modalities: ModalitySet::new(["audio", "visual"]),
        classes: CLASSES,
        train,
        validation,
        test,
        dep: Some(dep),
        segment_labels: None,
        notes: Vec::new(),
        word_vectors: None,
    })
}

/// Writes a folder in AV-MNIST's layout with `train` and `test` rows of seeded random values in
/// the real shapes and MultiBench's dtypes (112×112 `u8` spectrograms, 784 `f32` pixels, `i64`
/// labels): for tests, benches and trying the pipeline without the real data.
pub fn write_random_folder(root: &Path, train: usize, test: usize, seed: u64) -> std::io::Result<()> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for (split, rows) in [("train", train), ("test", test)] {
        let audio: Vec<u8> = (0..rows * 112 * 112).map(|_| rng.random()).collect();
        super::array::write_npy(&root.join(format!("audio/{split}_data.npy")), "|u1", &[rows, 112, 112], &audio)?;
        let image: Vec<u8> = (0..rows * 784).flat_map(|_| rng.random_range(0.0f32..255.0).to_le_bytes()).collect();
        super::array::write_npy(&root.join(format!("image/{split}_data.npy")), "<f4", &[rows, 784], &image)?;
        let labels: Vec<u8> = (0..rows).flat_map(|_| rng.random_range(0..10i64).to_le_bytes()).collect();
        super::array::write_npy(&root.join(format!("{split}_labels.npy")), "<i8", &[rows], &labels)?;
    }
    Ok(())
}
