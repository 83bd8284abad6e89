//! A typed n-d array (what `.npy`, pickled numpy arrays and HDF5 datasets decode to), and a
//! memory-mapped `.npy` reader that converts rows on demand.

use crate::npy::{dict_value, parse_shape};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{DataError, Result};

/// Element type of an array, as numpy spells it (little endian only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    /// `float16` (`f2`), IEEE half precision.
    F16,
    /// `float32` (`f4`).
    F32,
    /// `float64` (`f8`).
    F64,
    /// `uint8` (`u1`).
    U8,
    /// `int8` (`i1`).
    I8,
    /// `uint16` (`u2`).
    U16,
    /// `int16` (`i2`).
    I16,
    /// `uint32` (`u4`).
    U32,
    /// `int32` (`i4`).
    I32,
    /// `uint64` (`u8`).
    U64,
    /// `int64` (`i8`).
    I64,
    /// `bool` (`b1`), one byte per element.
    Bool,
}

impl DType {
    /// Parses a numpy type string such as `<f4`, `|u1`, `f8` or `float32`.
    pub fn from_numpy(descr: &str) -> Option<Self> {
        let d = descr.trim_start_matches(['<', '|', '=']);
        Some(match d {
            "f2" | "float16" => DType::F16,
            "f4" | "float32" => DType::F32,
            "f8" | "float64" => DType::F64,
            "u1" | "uint8" => DType::U8,
            "i1" | "int8" => DType::I8,
            "u2" | "uint16" => DType::U16,
            "i2" | "int16" => DType::I16,
            "u4" | "uint32" => DType::U32,
            "i4" | "int32" => DType::I32,
            "u8" | "uint64" => DType::U64,
            "i8" | "int64" => DType::I64,
            "b1" | "bool" => DType::Bool,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::U8 | DType::I8 | DType::Bool => 1,
            DType::F16 | DType::U16 | DType::I16 => 2,
            DType::F32 | DType::U32 | DType::I32 => 4,
            DType::F64 | DType::U64 | DType::I64 => 8,
        }
    }

    /// Whether values are integers (or booleans).
    pub fn is_integer(self) -> bool {
        !matches!(self, DType::F16 | DType::F32 | DType::F64)
    }
}

/// Converts little-endian raw bytes of `dtype` into `f64` values, appending to `out`.
pub(crate) fn decode_into<T: From<f32> + Copy>(bytes: &[u8], dtype: DType, out: &mut Vec<T>, conv: impl Fn(f64) -> T) {
    let n = bytes.len() / dtype.size();
    out.reserve(n);
    macro_rules! each {
        ($w:expr, $f:expr) => {
            for c in bytes.chunks_exact($w) {
                out.push(conv($f(c)));
            }
        };
    }
    match dtype {
        DType::F32 => {
            for c in bytes.chunks_exact(4) {
                out.push(T::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])));
            }
        }
        DType::F64 => each!(8, |c: &[u8]| f64::from_le_bytes(c.try_into().expect("8"))),
        DType::F16 => each!(2, |c: &[u8]| f16_to_f64(u16::from_le_bytes([c[0], c[1]]))),
        DType::U8 | DType::Bool => each!(1, |c: &[u8]| c[0] as f64),
        DType::I8 => each!(1, |c: &[u8]| c[0] as i8 as f64),
        DType::U16 => each!(2, |c: &[u8]| u16::from_le_bytes([c[0], c[1]]) as f64),
        DType::I16 => each!(2, |c: &[u8]| i16::from_le_bytes([c[0], c[1]]) as f64),
        DType::U32 => each!(4, |c: &[u8]| u32::from_le_bytes(c.try_into().expect("4")) as f64),
        DType::I32 => each!(4, |c: &[u8]| i32::from_le_bytes(c.try_into().expect("4")) as f64),
        DType::U64 => each!(8, |c: &[u8]| u64::from_le_bytes(c.try_into().expect("8")) as f64),
        DType::I64 => each!(8, |c: &[u8]| i64::from_le_bytes(c.try_into().expect("8")) as f64),
    }
}

fn f16_to_f64(h: u16) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = ((h >> 10) & 0x1f) as i32;
    let frac = (h & 0x3ff) as f64;
    sign * match exp {
        0 => frac * 2f64.powi(-24),
        31 => {
            if frac == 0.0 {
                f64::INFINITY
            } else {
                f64::NAN
            }
        }
        e => (1.0 + frac / 1024.0) * 2f64.powi(e - 15),
    }
}

/// An n-d array held in memory as raw little-endian bytes of its dtype, C order.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Element type.
    pub dtype: DType,
    /// The elements' raw little-endian bytes, in C order.
    pub bytes: Vec<u8>,
}

impl Array {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the array has no elements (some dimension is 0).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All values as `f32`.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = Vec::new();
        decode_into(&self.bytes, self.dtype, &mut out, |v| v as f32);
        out
    }

    /// All values as `f64`.
    pub fn to_f64(&self) -> Vec<f64> {
        let mut out: Vec<f64> = Vec::new();
        decode_into(&self.bytes, self.dtype, &mut out, |v| v);
        out
    }

    /// All values as `i64` (floats truncated towards zero).
    pub fn to_i64(&self) -> Vec<i64> {
        self.to_f64().into_iter().map(|v| v as i64).collect()
    }
}

/// A `.npy` header: dtype, shape and where the data start.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyHeader {
    /// Element type, from the header's `descr`.
    pub dtype: DType,
    /// Dimensions, from the header's `shape`.
    pub shape: Vec<usize>,
    /// Byte offset of the first element in the file.
    pub data_offset: usize,
}

fn npy_err(path: &Path, reason: impl Into<String>) -> DataError {
    DataError::Npy { path: path.to_path_buf(), member: String::new(), reason: reason.into() }
}

/// Parses the header of a `.npy` file held in `bytes` (at least the header must be present).
pub fn parse_npy_header(bytes: &[u8], path: &Path) -> Result<NpyHeader> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(npy_err(path, "missing the \\x93NUMPY magic bytes (not a .npy file, or truncated)"));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        2 | 3 => return Err(npy_err(path, "truncated header")),
        v => return Err(npy_err(path, format!("unsupported .npy format version {v}"))),
    };
    let end =
        start.checked_add(header_len).filter(|&e| e <= bytes.len()).ok_or_else(|| npy_err(path, "truncated header"))?;
    let header = std::str::from_utf8(&bytes[start..end]).map_err(|_| npy_err(path, "header is not utf-8"))?;
    let descr = dict_value(header, "descr").ok_or_else(|| npy_err(path, format!("no 'descr' in header {header:?}")))?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    if descr.starts_with('>') && descr != ">u1" && descr != ">i1" {
        return Err(npy_err(
            path,
            format!("big-endian dtype {descr} is not supported; save it little-endian (`a.astype(a.dtype.newbyteorder(\"<\"))` in NumPy)"),
        ));
    }
    let dtype = DType::from_numpy(descr.trim_start_matches('>'))
        .ok_or_else(|| npy_err(path, format!("dtype {descr} is not supported (numeric dtypes only)")))?;
    match dict_value(header, "fortran_order") {
        Some("False") => {}
        Some("True") => return Err(npy_err(path, "fortran order is not supported; save the array in C order")),
        _ => return Err(npy_err(path, format!("bad or missing fortran_order in header {header:?}"))),
    }
    let shape_text = dict_value(header, "shape").ok_or_else(|| npy_err(path, "no 'shape' in header"))?;
    let shape = parse_shape(shape_text).ok_or_else(|| npy_err(path, format!("bad shape {shape_text:?}")))?;
    Ok(NpyHeader { dtype, shape, data_offset: end })
}

/// A memory-mapped `.npy` file: the header is parsed once, rows are converted on demand.
/// The file is never read whole, so multi-GB arrays (AV-MNIST audio) cost only the rows used.
#[derive(Debug)]
pub struct NpyFile {
    path: PathBuf,
    map: Mmap,
    header: NpyHeader,
}

impl NpyFile {
    /// Maps `path` and checks that the data section holds exactly `prod(shape)` elements.
    pub fn open(path: &Path) -> Result<Self> {
        // A directory opens on Linux, and only its memory map fails ("No such device").
        super::require_not_dir(path)?;
        let file = File::open(path).map_err(|source| super::io_err(path, source))?;
        // SAFETY: the map is read-only; a file truncated by another process while mapped would
        // fault, which is the documented risk of memory-mapped reads (datasets are not rewritten
        // while training).
        let map = unsafe { Mmap::map(&file) }.map_err(|source| super::io_err(path, source))?;
        let header = parse_npy_header(&map, path)?;
        let have = map.len() - header.data_offset;
        Self::check_size(&header, have, path)?;
        Ok(Self { path: path.to_path_buf(), map, header })
    }

    /// Checks that `have` data bytes hold exactly the header's shape, with checked arithmetic:
    /// a header's shape is never trusted before it matches the file's length.
    pub(crate) fn check_size(header: &NpyHeader, have: usize, path: &Path) -> Result<()> {
        let need = crate::limits::checked_len(&header.shape, header.dtype.size())
            .and_then(|count| count.checked_mul(header.dtype.size()));
        let Some(need) = need else {
            return Err(npy_err(
                path,
                format!(
                    "shape {:?} of {:?} is too large to address ({have} bytes of data follow the header); \
                     the header is corrupt, so write the array again with numpy.save",
                    header.shape, header.dtype
                ),
            ));
        };
        if have != need {
            return Err(npy_err(
                path,
                format!(
                    "truncated or oversized data: {have} bytes after the header but shape {:?} of {:?} needs {need}; \
                     the file is damaged, so copy or write it again",
                    header.shape, header.dtype
                ),
            ));
        }
        Ok(())
    }

    /// The mapped file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The array's shape.
    pub fn shape(&self) -> &[usize] {
        &self.header.shape
    }

    /// The element type as stored.
    pub fn dtype(&self) -> DType {
        self.header.dtype
    }

    /// Number of rows (the first dimension; 1 for a 0-d array).
    pub fn rows(&self) -> usize {
        self.header.shape.first().copied().unwrap_or(1)
    }

    /// Elements per row.
    pub fn row_len(&self) -> usize {
        self.header.shape.iter().skip(1).product()
    }

    fn row_bytes(&self, start: usize, n: usize) -> &[u8] {
        let w = self.row_len() * self.header.dtype.size();
        let off = self.header.data_offset + start * w;
        &self.map[off..off + n * w]
    }

    /// Rows `start..start + n` as `f32`, multiplied by `scale`, appended to `out`.
    ///
    /// # Panics
    /// If the range exceeds [`Self::rows`].
    pub fn read_rows_f32(&self, start: usize, n: usize, scale: f32, out: &mut Vec<f32>) {
        assert!(start + n <= self.rows(), "rows {start}..{} out of {}", start + n, self.rows());
        let bytes = self.row_bytes(start, n);
        if scale == 1.0 {
            decode_into(bytes, self.header.dtype, out, |v| v as f32);
        } else {
            let from = out.len();
            decode_into(bytes, self.header.dtype, out, |v| v as f32);
            out[from..].iter_mut().for_each(|v| *v *= scale);
        }
    }

    /// The whole array, as a typed [`Array`].
    pub fn to_array(&self) -> Array {
        Array {
            shape: self.header.shape.clone(),
            dtype: self.header.dtype,
            bytes: self.map[self.header.data_offset..].to_vec(),
        }
    }
}

/// Parses a whole `.npy` file held in `bytes` into an [`Array`], with the same checks as
/// [`NpyFile::open`]; `path` only labels errors.
pub fn parse_npy_array(bytes: &[u8], path: &Path) -> Result<Array> {
    let header = parse_npy_header(bytes, path)?;
    NpyFile::check_size(&header, bytes.len() - header.data_offset, path)?;
    Ok(Array { shape: header.shape, dtype: header.dtype, bytes: bytes[header.data_offset..].to_vec() })
}

/// The bytes of a `.npy` (v1.0) file.
pub fn npy_bytes(descr: &str, shape: &[usize], body: &[u8]) -> Vec<u8> {
    let shape_txt = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!("({})", shape.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ")),
    };
    npy_bytes_with_header(&format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_txt}, }}"), body)
}

/// The bytes of a `.npy` (v1.0) file with the header dictionary `dict` as written (padded here),
/// so tests can write headers no real array has.
pub fn npy_bytes_with_header(dict: &str, body: &[u8]) -> Vec<u8> {
    let mut header = dict.to_string();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(body);
    out
}

/// Writes a `.npy` (v1.0) file; used by tests and tools to make fixtures.
pub fn write_npy(path: &Path, descr: &str, shape: &[usize], body: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, npy_bytes(descr, shape, body))
}
