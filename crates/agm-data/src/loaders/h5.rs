//! HDF5 datasets through `hdf5-pure` (pure Rust, streaming open: files larger than memory are
//! read by rows).

use std::path::Path;

use super::require;
use crate::error::{DataError, Result};

fn h5_err(path: &Path, reason: impl std::fmt::Display) -> DataError {
    DataError::Hdf5 { path: path.to_path_buf(), reason: reason.to_string() }
}

/// An open HDF5 dataset.
pub struct H5Dataset {
    path: std::path::PathBuf,
    ds: hdf5_pure::Dataset,
    shape: Vec<usize>,
}

impl H5Dataset {
    /// Opens dataset `name` of the file at `path`.
    pub fn open(path: &Path, name: &str) -> Result<Self> {
        require(path)?;
        let file = hdf5_pure::File::open_streaming(path).map_err(|e| h5_err(path, e))?;
        let ds = file
            .dataset(name)
            .map_err(|_| DataError::MissingKey { path: path.to_path_buf(), key: name.to_string() })?;
        let shape = ds.shape().map_err(|e| h5_err(path, e))?.into_iter().map(|d| d as usize).collect();
        Ok(Self { path: path.to_path_buf(), ds, shape })
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rows `start..start + n` as `f32` (any stored numeric type is converted).
    pub fn rows_f32(&self, start: usize, n: usize) -> Result<Vec<f32>> {
        self.ds.read_f32_rows(start as u64, n as u64).map_err(|e| h5_err(&self.path, e))
    }

    /// All values as `f32`.
    pub fn all_f32(&self) -> Result<Vec<f32>> {
        self.ds.read_f32().map_err(|e| h5_err(&self.path, e))
    }

    /// All values as `i64`.
    pub fn all_i64(&self) -> Result<Vec<i64>> {
        self.ds.read_i64().map_err(|e| h5_err(&self.path, e))
    }
}
