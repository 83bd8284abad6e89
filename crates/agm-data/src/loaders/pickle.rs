//! A minimal, safe Python pickle reader (protocols 2–5) for dicts, lists and numpy arrays.
//!
//! It interprets only the opcodes listed in data.md A6 (plus the protocol-5 in-band buffer) and
//! only these globals: numpy's `_reconstruct`, `ndarray`, `dtype`, `scalar` and `_frombuffer`
//! under both module paths (`numpy.core.*` of numpy 1.x and `numpy._core.*` of numpy 2.x),
//! `_codecs.encode`, and `collections.OrderedDict`. Anything else is rejected with an error, so
//! a pickle can never run code. Numpy arrays come out as our own typed [`Array`].

use std::path::Path;

use super::array::{Array, DType};
use crate::error::{DataError, Result};

/// A decoded Python value.
#[derive(Clone, Debug, PartialEq)]
pub enum Py {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Py>),
    Tuple(Vec<Py>),
    Dict(Vec<(Py, Py)>),
    /// A numpy array.
    Array(Array),
    /// A numpy dtype.
    DType(DType),
    /// A reference to an allowed global (function or class).
    Global(String),
    /// A numpy dtype or array this reader does not decode (e.g. an object or string array),
    /// kept so that keys the loaders do not use cannot fail a load.
    Opaque(String),
    /// An ndarray created by `_reconstruct`, waiting for its BUILD state.
    ArrayStub,
    /// A value on the stack marking the start of a variable-length group.
    Mark,
}

impl Py {
    /// The value under string key `key` of a dict.
    pub fn get(&self, key: &str) -> Option<&Py> {
        match self {
            Py::Dict(items) => items.iter().find(|(k, _)| matches!(k, Py::Str(s) if s == key)).map(|(_, v)| v),
            _ => None,
        }
    }

    /// A short name of the value's type, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Py::None => "None",
            Py::Bool(_) => "bool",
            Py::Int(_) => "int",
            Py::Float(_) => "float",
            Py::Str(_) => "str",
            Py::Bytes(_) => "bytes",
            Py::List(_) => "list",
            Py::Tuple(_) => "tuple",
            Py::Dict(_) => "dict",
            Py::Array(_) => "ndarray",
            Py::DType(_) => "dtype",
            Py::Global(_) => "global",
            Py::Opaque(_) => "unsupported numpy object",
            Py::ArrayStub => "ndarray (unbuilt)",
            Py::Mark => "mark",
        }
    }

    /// A number (int, float, bool, 0-d or 1-element array) as `f64`.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Py::Int(i) => Some(*i as f64),
            Py::Float(f) => Some(*f),
            Py::Bool(b) => Some(*b as u8 as f64),
            Py::Array(a) if a.len() == 1 => a.to_f64().first().copied(),
            Py::List(v) | Py::Tuple(v) if v.len() == 1 => v[0].as_f64(),
            _ => None,
        }
    }
}

fn err(path: &Path, pos: usize, reason: impl Into<String>) -> DataError {
    DataError::Pickle { path: path.to_path_buf(), reason: format!("at byte {pos}: {}", reason.into()) }
}

/// Reads and decodes the pickle file at `path`.
pub fn read_pickle(path: &Path) -> Result<Py> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io { path: path.to_path_buf(), cause: source })?;
    parse_pickle(&bytes, path)
}

/// Decodes pickle `bytes`; `path` only labels errors.
pub fn parse_pickle(bytes: &[u8], path: &Path) -> Result<Py> {
    Vm { bytes, pos: 0, path, stack: Vec::new(), memo: std::collections::HashMap::new() }.run()
}

struct Vm<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
    stack: Vec<Py>,
    memo: std::collections::HashMap<u32, Py>,
}

impl Vm<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(e) => {
                let s = &self.bytes[self.pos..e];
                self.pos = e;
                Ok(s)
            }
            None => Err(err(self.path, self.pos, "truncated pickle (unexpected end of file)")),
        }
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn len64(&mut self) -> Result<usize> {
        let n = self.u64()?;
        usize::try_from(n).map_err(|_| err(self.path, self.pos, "length too large"))
    }
    fn line(&mut self) -> Result<String> {
        let rest = &self.bytes[self.pos..];
        let nl = rest.iter().position(|&b| b == b'\n').ok_or_else(|| err(self.path, self.pos, "unterminated line"))?;
        let s = String::from_utf8_lossy(&rest[..nl]).into_owned();
        self.pos += nl + 1;
        Ok(s)
    }
    fn pop(&mut self) -> Result<Py> {
        self.stack.pop().ok_or_else(|| err(self.path, self.pos, "stack underflow"))
    }
    fn pop_mark(&mut self) -> Result<Vec<Py>> {
        let m = self
            .stack
            .iter()
            .rposition(|v| matches!(v, Py::Mark))
            .ok_or_else(|| err(self.path, self.pos, "no MARK on the stack"))?;
        let items = self.stack.split_off(m + 1);
        self.stack.pop();
        Ok(items)
    }
    fn top(&mut self) -> Result<&mut Py> {
        let pos = self.pos;
        self.stack.last_mut().ok_or_else(|| err(self.path, pos, "stack underflow"))
    }
    fn utf8(&self, b: Vec<u8>) -> Result<Py> {
        String::from_utf8(b).map(Py::Str).map_err(|_| err(self.path, self.pos, "string is not utf-8"))
    }

    fn run(mut self) -> Result<Py> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let p = self.u8()?;
                    if p > 5 {
                        return Err(err(self.path, at, format!("unsupported pickle protocol {p}")));
                    }
                }
                0x95 => {
                    self.u64()?;
                }
                b'.' => return self.pop(),
                b'(' => self.stack.push(Py::Mark),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                b'}' => self.stack.push(Py::Dict(Vec::new())),
                b']' => self.stack.push(Py::List(Vec::new())),
                b')' => self.stack.push(Py::Tuple(Vec::new())),
                0x8f => self.stack.push(Py::List(Vec::new())), // EMPTY_SET, kept as a list
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err(err(self.path, at, "stack underflow"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Py::Tuple(items));
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Py::Tuple(items));
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.stack.push(Py::List(items));
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Py::List(items));
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let d = pairs(items).ok_or_else(|| err(self.path, at, "odd number of dict items"))?;
                    self.stack.push(Py::Dict(d));
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    match self.top()? {
                        Py::Dict(d) => d.push((k, v)),
                        other => {
                            let kind = other.kind();
                            return Err(err(self.path, at, format!("SETITEM on a {kind}")));
                        }
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let new = pairs(items).ok_or_else(|| err(self.path, at, "odd number of dict items"))?;
                    match self.top()? {
                        Py::Dict(d) => d.extend(new),
                        other => {
                            let kind = other.kind();
                            return Err(err(self.path, at, format!("SETITEMS on a {kind}")));
                        }
                    }
                }
                b'a' => {
                    let v = self.pop()?;
                    match self.top()? {
                        Py::List(l) => l.push(v),
                        other => {
                            let kind = other.kind();
                            return Err(err(self.path, at, format!("APPEND on a {kind}")));
                        }
                    }
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    match self.top()? {
                        Py::List(l) => l.extend(items),
                        other => {
                            let kind = other.kind();
                            return Err(err(self.path, at, format!("APPENDS on a {kind}")));
                        }
                    }
                }
                b'J' => {
                    let v = self.u32()? as i32;
                    self.stack.push(Py::Int(v as i64));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Py::Int(v as i64));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.stack.push(Py::Int(v as i64));
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?.to_vec();
                    if n > 8 {
                        return Err(err(self.path, at, "integer wider than 64 bits"));
                    }
                    let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) { [0xffu8; 8] } else { [0u8; 8] };
                    buf[..n].copy_from_slice(&b);
                    self.stack.push(Py::Int(i64::from_le_bytes(buf)));
                }
                b'I' | b'L' => {
                    let l = self.line()?;
                    let t = l.trim_end_matches('L');
                    let v = match t {
                        "01" => Py::Bool(true),
                        "00" => Py::Bool(false),
                        _ => Py::Int(t.parse().map_err(|_| err(self.path, at, format!("bad int {l:?}")))?),
                    };
                    self.stack.push(v);
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes"));
                    self.stack.push(Py::Float(v));
                }
                b'F' => {
                    let l = self.line()?;
                    self.stack.push(Py::Float(l.trim().parse().map_err(|_| err(self.path, at, "bad float"))?));
                }
                0x88 => self.stack.push(Py::Bool(true)),
                0x89 => self.stack.push(Py::Bool(false)),
                b'N' => self.stack.push(Py::None),
                0x8c => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?.to_vec();
                    let v = self.utf8(b)?;
                    self.stack.push(v);
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?.to_vec();
                    let v = self.utf8(b)?;
                    self.stack.push(v);
                }
                0x8d => {
                    let n = self.len64()?;
                    let b = self.take(n)?.to_vec();
                    let v = self.utf8(b)?;
                    self.stack.push(v);
                }
                // Python 2 byte strings: kept as str when utf-8, else bytes.
                b'U' | b'T' => {
                    let n = if op == b'U' { self.u8()? as usize } else { self.u32()? as usize };
                    let b = self.take(n)?.to_vec();
                    let v = String::from_utf8(b.clone()).map(Py::Str).unwrap_or(Py::Bytes(b));
                    self.stack.push(v);
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.stack.push(Py::Bytes(b));
                }
                b'B' => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.stack.push(Py::Bytes(b));
                }
                0x8e | 0x96 => {
                    let n = self.len64()?;
                    let b = self.take(n)?.to_vec();
                    self.stack.push(Py::Bytes(b));
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = self.global(&module, &name, at)?;
                    self.stack.push(g);
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Py::Str(m), Py::Str(n)) => {
                            let g = self.global(&m, &n, at)?;
                            self.stack.push(g);
                        }
                        _ => return Err(err(self.path, at, "STACK_GLOBAL needs two strings")),
                    }
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let v = self.call(func, args, at)?;
                    self.stack.push(v);
                }
                b'b' => {
                    let state = self.pop()?;
                    let obj = self.pop()?;
                    let v = self.build(obj, state, at)?;
                    self.stack.push(v);
                }
                b'q' => {
                    let i = self.u8()? as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                b'r' => {
                    let i = self.u32()?;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                0x94 => {
                    let i = self.memo.len() as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                b'h' | b'j' => {
                    let i = if op == b'h' { self.u8()? as u32 } else { self.u32()? };
                    let v =
                        self.memo.get(&i).cloned().ok_or_else(|| err(self.path, at, format!("memo {i} not set")))?;
                    self.stack.push(v);
                }
                other => return Err(err(self.path, at, format!("unsupported pickle opcode 0x{other:02x}"))),
            }
        }
    }

    fn global(&self, module: &str, name: &str, at: usize) -> Result<Py> {
        let numpy = matches!(
            module,
            "numpy" | "numpy.core.multiarray" | "numpy._core.multiarray" | "numpy.core.numeric" | "numpy._core.numeric"
        );
        let ok = match name {
            "_reconstruct" | "ndarray" | "dtype" | "scalar" | "_frombuffer" => numpy,
            "encode" => module == "_codecs",
            "OrderedDict" => module == "collections",
            _ => false,
        };
        if ok {
            Ok(Py::Global(name.to_string()))
        } else {
            Err(err(
                self.path,
                at,
                format!("global {module}.{name} is not allowed (only numpy arrays, dicts and lists)"),
            ))
        }
    }

    fn call(&self, func: Py, args: Py, at: usize) -> Result<Py> {
        let name = match func {
            Py::Global(n) => n,
            other => return Err(err(self.path, at, format!("cannot call a {}", other.kind()))),
        };
        let args = match args {
            Py::Tuple(a) => a,
            other => return Err(err(self.path, at, format!("call arguments are a {}", other.kind()))),
        };
        let bad = |what: &str| err(self.path, at, format!("bad arguments to {name}: {what}"));
        match name.as_str() {
            "_reconstruct" | "ndarray" => Ok(Py::ArrayStub),
            "OrderedDict" => Ok(Py::Dict(Vec::new())),
            "dtype" => match args.first() {
                Some(Py::Str(s)) => {
                    Ok(DType::from_numpy(s).map(Py::DType).unwrap_or_else(|| Py::Opaque(format!("dtype {s}"))))
                }
                _ => Err(bad("expected a dtype string")),
            },
            "encode" => match args.first() {
                Some(Py::Str(s)) => Ok(Py::Bytes(s.chars().map(|c| c as u32 as u8).collect())),
                _ => Err(bad("expected a str")),
            },
            "scalar" => match (args.first(), args.get(1)) {
                (Some(Py::DType(d)), Some(Py::Bytes(b))) if b.len() == d.size() => {
                    Ok(Py::Array(Array { shape: vec![], dtype: *d, bytes: b.clone() }))
                }
                (Some(Py::Opaque(d)), _) => Ok(Py::Opaque(format!("scalar of {d}"))),
                _ => Err(bad("expected (dtype, bytes of its size)")),
            },
            "_frombuffer" => match (args.first(), args.get(1), args.get(2)) {
                (Some(Py::Bytes(b)), Some(Py::DType(d)), Some(Py::Tuple(shape))) => {
                    let shape = ints(shape).ok_or_else(|| bad("shape"))?;
                    make_array(shape, *d, b.clone()).map(Py::Array).map_err(|r| bad(&r))
                }
                (_, Some(Py::Opaque(d)), _) => Ok(Py::Opaque(format!("array of {d}"))),
                _ => Err(bad("expected (buffer, dtype, shape, order)")),
            },
            _ => Err(bad("not callable")),
        }
    }

    fn build(&self, obj: Py, state: Py, at: usize) -> Result<Py> {
        match obj {
            Py::ArrayStub => {
                // state = (version, shape, dtype, fortran_order, data)
                let s = match state {
                    Py::Tuple(s) if s.len() == 5 => s,
                    other => return Err(err(self.path, at, format!("ndarray state is a {}", other.kind()))),
                };
                let shape = match &s[1] {
                    Py::Tuple(t) => ints(t).ok_or_else(|| err(self.path, at, "bad ndarray shape"))?,
                    _ => return Err(err(self.path, at, "bad ndarray shape")),
                };
                let dtype = match &s[2] {
                    Py::DType(d) => *d,
                    Py::Opaque(d) => return Ok(Py::Opaque(format!("ndarray of {d}"))),
                    other => return Err(err(self.path, at, format!("ndarray dtype is a {}", other.kind()))),
                };
                if s[3] == Py::Bool(true) && shape.len() > 1 {
                    return Err(err(self.path, at, "fortran-order arrays are not supported"));
                }
                let data = match &s[4] {
                    Py::Bytes(b) => b.clone(),
                    Py::Str(st) => st.chars().map(|c| c as u32 as u8).collect(),
                    other => {
                        return Err(err(
                            self.path,
                            at,
                            format!("ndarray data is a {} (object arrays are not supported)", other.kind()),
                        ))
                    }
                };
                make_array(shape, dtype, data).map(Py::Array).map_err(|r| err(self.path, at, r))
            }
            Py::Opaque(d) => Ok(Py::Opaque(d)),
            Py::DType(d) => {
                if let Py::Tuple(s) = &state {
                    if s.get(1) == Some(&Py::Str(">".into())) && d.size() > 1 {
                        return Err(err(self.path, at, "big-endian arrays are not supported"));
                    }
                }
                Ok(Py::DType(d))
            }
            Py::Dict(mut d) => {
                if let Py::Dict(extra) = state {
                    d.extend(extra);
                }
                Ok(Py::Dict(d))
            }
            other => Err(err(self.path, at, format!("BUILD on a {}", other.kind()))),
        }
    }
}

fn make_array(shape: Vec<usize>, dtype: DType, bytes: Vec<u8>) -> std::result::Result<Array, String> {
    let need = shape.iter().product::<usize>() * dtype.size();
    if bytes.len() != need {
        return Err(format!("ndarray of shape {shape:?} {dtype:?} needs {need} bytes but holds {}", bytes.len()));
    }
    Ok(Array { shape, dtype, bytes })
}

fn ints(t: &[Py]) -> Option<Vec<usize>> {
    t.iter().map(|v| if let Py::Int(i) = v { usize::try_from(*i).ok() } else { None }).collect()
}

fn pairs(items: Vec<Py>) -> Option<Vec<(Py, Py)>> {
    if !items.len().is_multiple_of(2) {
        return None;
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Some(out)
}
