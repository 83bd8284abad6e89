//! HDF5 datasets through `hdf5-pure` (pure Rust, streaming open: files larger than memory are
//! read by rows).

use std::path::Path;

use super::require;
use crate::error::{DataError, Result};

fn h5_err(path: &Path, reason: impl std::fmt::Display) -> DataError {
    DataError::Hdf5 { path: path.to_path_buf(), reason: reason.to_string() }
}

/// An open HDF5 dataset.
///
/// Its shape is checked against the file's size on open: an uncompressed dataset must fit in
/// the file, a compressed one may expand at most [`crate::limits::MAX_H5_EXPANSION`] times the
/// file. So is where its bytes lie (every stored run and chunk inside the file, a chunk's shape
/// within the same bound), since the reader sizes its buffers from those fields before it
/// reads. Reads then check that the library returned the values the shape promises.
pub struct H5Dataset {
    path: std::path::PathBuf,
    ds: hdf5_pure::Dataset,
    shape: Vec<usize>,
}

impl H5Dataset {
    /// Opens dataset `name` of the file at `path`.
    pub fn open(path: &Path, name: &str) -> Result<Self> {
        require(path)?;
        super::require_not_dir(path)?;
        let file_len = std::fs::metadata(path).map_err(|e| super::io_err(path, e))?.len();
        let file = guard(path, || hdf5_pure::File::open_streaming(path))?;
        Self::from_file(file, file_len, path, name)
    }

    /// Opens dataset `name` of an HDF5 file held in `bytes`; `path` only labels errors.
    pub fn from_bytes(bytes: Vec<u8>, path: &Path, name: &str) -> Result<Self> {
        let file_len = bytes.len() as u64;
        let file = guard(path, || hdf5_pure::File::from_bytes(bytes))?;
        Self::from_file(file, file_len, path, name)
    }

    fn from_file(file: hdf5_pure::File, file_len: u64, path: &Path, name: &str) -> Result<Self> {
        let ds = guard(path, || file.dataset(name))
            .map_err(|_| DataError::MissingKey { path: path.to_path_buf(), key: name.to_string() })?;
        let dims = guard(path, || ds.shape())?;
        let shape: Vec<usize> = dims
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| h5_err(path, format!("`{name}`: dimension {d} is too large"))))
            .collect::<Result<_>>()?;
        let elem = guard(path, || ds.element_size())?;
        let bytes = byte_len(&shape, elem).ok_or_else(|| {
            h5_err(path, format!("`{name}`: shape {shape:?} is too large to address; the file is corrupt"))
        })?;
        let compressed = !ds.filters().is_empty();
        let room = if compressed { file_len.saturating_mul(crate::limits::MAX_H5_EXPANSION) } else { file_len };
        if bytes > room {
            return Err(h5_err(
                path,
                format!(
                    "`{name}`: shape {shape:?} needs {bytes} bytes but the {}file has {file_len}; the file is \
                     truncated or corrupt, so copy it again",
                    if compressed { "compressed " } else { "" }
                ),
            ));
        }
        check_storage(&ds, file_len, room, elem, path, name)?;
        Ok(Self { path: path.to_path_buf(), ds, shape })
    }

    /// The dataset's shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn expect_len(&self, v: Vec<f32>, n: usize) -> Result<Vec<f32>> {
        if v.len() != n {
            return Err(h5_err(&self.path, format!("read {} values where the shape promises {n}", v.len())));
        }
        Ok(v)
    }

    /// Rows `start..start + n` as `f32` (any stored numeric type is converted).
    pub fn rows_f32(&self, start: usize, n: usize) -> Result<Vec<f32>> {
        let rows = self.shape.first().copied().unwrap_or(1);
        if start.checked_add(n).is_none_or(|e| e > rows) {
            return Err(h5_err(&self.path, format!("rows {start}..{} are outside 0..{rows}", start.saturating_add(n))));
        }
        let v = guard(&self.path, || self.ds.read_f32_rows(start as u64, n as u64))?;
        self.expect_len(v, n * self.shape.iter().skip(1).product::<usize>())
    }

    /// All values as `f32`.
    pub fn all_f32(&self) -> Result<Vec<f32>> {
        let v = guard(&self.path, || self.ds.read_f32())?;
        self.expect_len(v, self.shape.iter().product())
    }

    /// All values as `i64`.
    pub fn all_i64(&self) -> Result<Vec<i64>> {
        let v = guard(&self.path, || self.ds.read_i64())?;
        if v.len() != self.shape.iter().product::<usize>() {
            return Err(h5_err(
                &self.path,
                format!("read {} values where the shape {:?} promises more", v.len(), self.shape),
            ));
        }
        Ok(v)
    }
}

/// Refuses storage the file cannot hold: a contiguous run or a chunk that ends past the file, or a
/// chunk shape larger than `room`. A corrupt size field would otherwise become one huge
/// allocation inside the reader, which aborts the process rather than failing.
fn check_storage(ds: &hdf5_pure::Dataset, file_len: u64, room: u64, elem: u64, path: &Path, name: &str) -> Result<()> {
    let past_end = |what: String, address: u64, size: u64| {
        if address.checked_add(size).is_some_and(|end| end <= file_len) {
            return Ok(());
        }
        Err(h5_err(
            path,
            format!(
                "`{name}`: {what} of {size} bytes at offset {address} ends past the file's {file_len} bytes; the \
                 file is truncated or corrupt, so copy it again"
            ),
        ))
    };
    match guard(path, || ds.layout())? {
        hdf5_pure::Layout::Contiguous { address: Some(address), size } => past_end("the data".into(), address, size),
        hdf5_pure::Layout::Chunked { chunk_shape, .. } => {
            let dims: Option<Vec<usize>> = chunk_shape.iter().map(|&d| usize::try_from(d).ok()).collect();
            if dims.and_then(|d| byte_len(&d, elem)).is_none_or(|b| b > room) {
                return Err(h5_err(
                    path,
                    format!(
                        "`{name}`: chunk shape {chunk_shape:?} is larger than the file can hold; the file is corrupt"
                    ),
                ));
            }
            // Datasets whose chunk index cannot be listed (a B-tree v2) are left to the reader.
            let Ok(chunks) = guard(path, || ds.chunks()) else { return Ok(()) };
            chunks.iter().try_for_each(|c| past_end(format!("chunk {:?}", c.offset), c.address, c.storage_size))
        }
        _ => Ok(()),
    }
}

/// Bytes of `shape` elements of `elem` bytes each; `None` when that does not fit in memory.
fn byte_len(shape: &[usize], elem: u64) -> Option<u64> {
    crate::limits::checked_len(shape, usize::try_from(elem).ok()?).and_then(|n| (n as u64).checked_mul(elem))
}

/// Runs an `hdf5-pure` call, turning its errors and any panic inside it into an error naming
/// the file: a corrupt file must not take the process down.
fn guard<T, E: std::fmt::Display>(path: &Path, f: impl FnOnce() -> std::result::Result<T, E>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(|e| h5_err(path, e)),
        Err(_) => Err(h5_err(path, "the HDF5 reader failed on this file (it is corrupt); copy it again")),
    }
}
