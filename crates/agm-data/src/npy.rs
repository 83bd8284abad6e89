//! A minimal reader for NumPy `.npy` arrays: little-endian `f4` and `i8`, C order.

use std::path::Path;

use crate::error::{DataError, Result};

/// The values of a parsed array.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum NpyData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// A parsed `.npy` array.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct NpyArray {
    pub shape: Vec<usize>,
    pub data: NpyData,
}

impl NpyArray {
    pub fn into_f32(self, path: &Path, member: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        match self.data {
            NpyData::F32(v) => Ok((self.shape, v)),
            NpyData::I64(_) => Err(npy_err(path, member, "dtype is <i8 but <f4 was expected")),
        }
    }

    pub fn into_i64(self, path: &Path, member: &str) -> Result<(Vec<usize>, Vec<i64>)> {
        match self.data {
            NpyData::I64(v) => Ok((self.shape, v)),
            NpyData::F32(_) => Err(npy_err(path, member, "dtype is <f4 but <i8 was expected")),
        }
    }
}

fn npy_err(path: &Path, member: &str, reason: impl Into<String>) -> DataError {
    DataError::Npy { path: path.to_path_buf(), member: member.to_string(), reason: reason.into() }
}

/// Parses the bytes of a `.npy` file. `path` and `member` only label errors.
pub(crate) fn parse_npy(bytes: &[u8], path: &Path, member: &str) -> Result<NpyArray> {
    let err = |reason: String| npy_err(path, member, reason);
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(err("missing the \\x93NUMPY magic bytes".into()));
    }
    let major = bytes[6];
    let (header_len, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(err("truncated header".into()));
            }
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        v => return Err(err(format!("unsupported format version {v}"))),
    };
    let end =
        start.checked_add(header_len).filter(|&e| e <= bytes.len()).ok_or_else(|| err("truncated header".into()))?;
    let header = std::str::from_utf8(&bytes[start..end]).map_err(|_| err("header is not utf-8".into()))?;

    let descr = dict_value(header, "descr").ok_or_else(|| err(format!("no 'descr' in header {header:?}")))?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let fortran =
        dict_value(header, "fortran_order").ok_or_else(|| err(format!("no 'fortran_order' in header {header:?}")))?;
    match fortran {
        "False" => {}
        "True" => return Err(err("fortran order is not supported; save the array in C order".into())),
        other => return Err(err(format!("bad fortran_order value {other:?}"))),
    }
    let shape_text = dict_value(header, "shape").ok_or_else(|| err(format!("no 'shape' in header {header:?}")))?;
    let shape = parse_shape(shape_text).ok_or_else(|| err(format!("bad shape {shape_text:?}")))?;
    // The shape is checked against the body's length before any buffer is sized from it.
    let count = crate::limits::checked_len(&shape, 8)
        .ok_or_else(|| err(format!("shape {shape:?} is too large to address; the header is corrupt")))?;

    let body = &bytes[end..];
    let elem = match descr {
        "<f4" | "<i8" => descr,
        other => return Err(err(format!("dtype {other} is not supported (only <f4 and <i8)"))),
    };
    let size = if elem == "<f4" { 4 } else { 8 };
    if body.len() != count * size {
        return Err(err(format!(
            "data holds {} bytes but shape {shape:?} of {elem} needs {}",
            body.len(),
            count * size
        )));
    }
    let data = if elem == "<f4" {
        NpyData::F32(body.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    } else {
        NpyData::I64(body.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect())
    };
    Ok(NpyArray { shape, data })
}

/// The raw text of `'key': value` in a Python dict literal (value up to the next top-level comma
/// or the closing brace).
pub(crate) fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pat_single = format!("'{key}'");
    let pat_double = format!("\"{key}\"");
    let pos = header
        .find(&pat_single)
        .map(|p| p + pat_single.len())
        .or_else(|| header.find(&pat_double).map(|p| p + pat_double.len()))?;
    let rest = header[pos..].trim_start().strip_prefix(':')?.trim_start();
    let mut depth = 0i32;
    for (i, c) in rest.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(rest[..i].trim()),
            _ => {}
        }
    }
    None
}

pub(crate) fn parse_shape(text: &str) -> Option<Vec<usize>> {
    let inner = text.strip_prefix('(')?.strip_suffix(')')?;
    inner.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| s.trim_end_matches('L').parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, fortran: &str, shape: &str, body: &[u8]) -> Vec<u8> {
        let dict = format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}");
        crate::loaders::array::npy_bytes_with_header(&dict, body)
    }

    #[test]
    fn reads_f32_and_i64() {
        let body: Vec<u8> = [1.5f32, -2.0, 3.25, 0.0, 7.0, 8.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let a = parse_npy(&npy("<f4", "False", "(2, 3)", &body), Path::new("x"), "a.npy").unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.data, NpyData::F32(vec![1.5, -2.0, 3.25, 0.0, 7.0, 8.0]));

        let body: Vec<u8> = [5i64, -1].iter().flat_map(|v| v.to_le_bytes()).collect();
        let a = parse_npy(&npy("<i8", "False", "(2,)", &body), Path::new("x"), "b.npy").unwrap();
        assert_eq!(a.shape, vec![2]);
        assert_eq!(a.data, NpyData::I64(vec![5, -1]));
    }

    #[test]
    fn rejects_other_dtypes_fortran_order_and_short_data() {
        let e = parse_npy(&npy("<f8", "False", "(1,)", &[0; 8]), Path::new("x"), "c.npy").unwrap_err();
        assert!(e.to_string().contains("dtype <f8 is not supported"), "{e}");
        let e = parse_npy(&npy("<f4", "True", "(1,)", &[0; 4]), Path::new("x"), "c.npy").unwrap_err();
        assert!(e.to_string().contains("fortran order"), "{e}");
        let e = parse_npy(&npy("<f4", "False", "(2,)", &[0; 4]), Path::new("x"), "c.npy").unwrap_err();
        assert!(e.to_string().contains("needs 8"), "{e}");
        let e = parse_npy(b"not an npy file", Path::new("x"), "c.npy").unwrap_err();
        assert!(e.to_string().contains("magic"), "{e}");
    }
}
