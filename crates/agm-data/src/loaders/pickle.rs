//! A minimal, safe Python pickle reader (protocols 2–5) for dicts, lists and numpy arrays.
//!
//! It interprets only the opcodes these files use (plus the protocol-5 in-band buffer) and
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
    /// Python's `None`.
    None,
    /// A `bool`.
    Bool(bool),
    /// An `int` (at most 64 bits; wider ones are an error).
    Int(i64),
    /// A `float`.
    Float(f64),
    /// A `str` (and a Python 2 byte string that is valid UTF-8).
    Str(String),
    /// A `bytes` or `bytearray` (and a Python 2 byte string that is not UTF-8).
    Bytes(Vec<u8>),
    /// A `list`.
    List(Vec<Py>),
    /// A `tuple`.
    Tuple(Vec<Py>),
    /// A `dict` or `OrderedDict`: its key-value pairs in the order the pickle sets them.
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

    /// [`Self::kind`] with its article (`an int`, `a list`), and for an unsupported numpy
    /// object what it is, for messages such as "`x` is an int, not a numpy array".
    pub fn a_kind(&self) -> String {
        match self {
            Py::Opaque(what) => format!("an unsupported numpy object ({what})"),
            Py::None => "None".into(),
            other => {
                let kind = other.kind();
                let article = if kind.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
                format!("{article} {kind}")
            }
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
    let bytes = std::fs::read(path).map_err(|source| super::io_err(path, source))?;
    parse_pickle(&bytes, path)
}

/// Decodes pickle `bytes`; `path` only labels errors.
///
/// Resource use is bounded by the input's size: nesting deeper than
/// [`crate::limits::MAX_PICKLE_DEPTH`], more than [`crate::limits::MAX_PICKLE_MEMO`] memo
/// entries, or copies of shared values (memo GET, DUP) beyond
/// `PICKLE_BUDGET_FACTOR × bytes.len() + PICKLE_BUDGET_SLACK` units are errors.
pub fn parse_pickle(bytes: &[u8], path: &Path) -> Result<Py> {
    use crate::limits::{PICKLE_BUDGET_FACTOR, PICKLE_BUDGET_SLACK};
    let budget = bytes.len().saturating_mul(PICKLE_BUDGET_FACTOR).saturating_add(PICKLE_BUDGET_SLACK);
    Vm { bytes, pos: 0, path, stack: Vec::new(), memo: std::collections::HashMap::new(), copied: 0, budget }.run()
}

/// A value with its nesting depth and size, so limits are checked without walking it.
#[derive(Clone)]
struct Val {
    py: Py,
    depth: usize,
    /// One per value plus one per byte of strings and buffers.
    cost: usize,
}

impl Val {
    fn leaf(py: Py) -> Self {
        let bytes = match &py {
            Py::Str(s) => s.len(),
            Py::Bytes(b) => b.len(),
            Py::Array(a) => a.bytes.len(),
            _ => 0,
        };
        Val { py, depth: 0, cost: 1 + bytes }
    }
}

struct Vm<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
    stack: Vec<Val>,
    memo: std::collections::HashMap<u32, Val>,
    /// Units copied so far by memo and DUP operations.
    copied: usize,
    budget: usize,
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
    fn push(&mut self, py: Py) {
        self.stack.push(Val::leaf(py));
    }
    fn pop(&mut self) -> Result<Val> {
        self.stack.pop().ok_or_else(|| err(self.path, self.pos, "stack underflow"))
    }
    fn pop_mark(&mut self) -> Result<Vec<Val>> {
        let m = self
            .stack
            .iter()
            .rposition(|v| matches!(v.py, Py::Mark))
            .ok_or_else(|| err(self.path, self.pos, "no MARK on the stack"))?;
        let items = self.stack.split_off(m + 1);
        self.stack.pop();
        Ok(items)
    }
    fn top(&mut self) -> Result<&mut Val> {
        let pos = self.pos;
        self.stack.last_mut().ok_or_else(|| err(self.path, pos, "stack underflow"))
    }
    fn utf8(&self, b: Vec<u8>) -> Result<Py> {
        String::from_utf8(b).map(Py::Str).map_err(|_| err(self.path, self.pos, "string is not utf-8"))
    }

    /// Charges a copy of `v` to the budget; shared references are the only way a pickle
    /// grows faster than its own length.
    fn copy(&mut self, v: &Val, at: usize) -> Result<Val> {
        self.copied = self.copied.saturating_add(v.cost);
        if self.copied > self.budget {
            return Err(err(
                self.path,
                at,
                format!(
                    "shared references expand to more than {} units for a {}-byte file (a pickle bomb?); \
                     save the data again without self-references",
                    self.budget,
                    self.bytes.len()
                ),
            ));
        }
        Ok(v.clone())
    }

    /// The depth and cost of a container holding `items`, checked against the depth limit.
    fn meta(&self, items: &[Val], at: usize) -> Result<(usize, usize)> {
        let depth = 1 + items.iter().map(|v| v.depth).max().unwrap_or(0);
        let cost = items.iter().fold(1usize, |a, v| a.saturating_add(v.cost));
        self.check_depth(depth, at)?;
        Ok((depth, cost))
    }

    fn check_depth(&self, depth: usize, at: usize) -> Result<()> {
        if depth > crate::limits::MAX_PICKLE_DEPTH {
            return Err(err(
                self.path,
                at,
                format!(
                    "values nest deeper than {} levels; the datasets' pickles nest a few levels, so the file is \
                     corrupt",
                    crate::limits::MAX_PICKLE_DEPTH
                ),
            ));
        }
        Ok(())
    }

    fn container(&mut self, items: Vec<Val>, make: impl FnOnce(Vec<Py>) -> Py, at: usize) -> Result<()> {
        let (depth, cost) = self.meta(&items, at)?;
        let py = make(items.into_iter().map(|v| v.py).collect());
        self.stack.push(Val { py, depth, cost });
        Ok(())
    }

    /// Adds `items` (values, or key-value pairs for a dict) to the container on top.
    fn extend_top(&mut self, items: Vec<Val>, op: &str, at: usize) -> Result<()> {
        let (depth, cost) = self.meta(&items, at)?;
        let path = self.path;
        let top = self.top()?;
        let py: Vec<Py> = items.into_iter().map(|v| v.py).collect();
        match &mut top.py {
            Py::List(l) if op.starts_with("APPEND") => l.extend(py),
            Py::Dict(d) if op.starts_with("SETITEM") => {
                d.extend(pairs(py).ok_or_else(|| err(path, at, "odd number of dict items"))?)
            }
            other => {
                let kind = other.a_kind();
                return Err(err(path, at, format!("{op} on {kind}")));
            }
        }
        top.depth = top.depth.max(depth);
        top.cost = top.cost.saturating_add(cost - 1);
        Ok(())
    }

    fn memo_put(&mut self, i: u32, at: usize) -> Result<()> {
        if self.memo.len() >= crate::limits::MAX_PICKLE_MEMO && !self.memo.contains_key(&i) {
            return Err(err(
                self.path,
                at,
                format!("more than {} memo entries; the file is corrupt", crate::limits::MAX_PICKLE_MEMO),
            ));
        }
        let top = self.top()?.clone();
        let v = self.copy(&top, at)?;
        self.memo.insert(i, v);
        Ok(())
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
                b'.' => return self.pop().map(|v| v.py),
                b'(' => self.push(Py::Mark),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let top = self.top()?.clone();
                    let v = self.copy(&top, at)?;
                    self.stack.push(v);
                }
                b'}' => self.push(Py::Dict(Vec::new())),
                b']' => self.push(Py::List(Vec::new())),
                b')' => self.push(Py::Tuple(Vec::new())),
                0x8f => self.push(Py::List(Vec::new())), // EMPTY_SET, kept as a list
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err(err(self.path, at, "stack underflow"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.container(items, Py::Tuple, at)?;
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.container(items, Py::Tuple, at)?;
                }
                0x91 | b'l' => {
                    let items = self.pop_mark()?;
                    self.container(items, Py::List, at)?;
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    if !items.len().is_multiple_of(2) {
                        return Err(err(self.path, at, "odd number of dict items"));
                    }
                    self.container(items, |v| Py::Dict(pairs(v).expect("even")), at)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.extend_top(vec![k, v], "SETITEM", at)?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.extend_top(items, "SETITEMS", at)?;
                }
                b'a' => {
                    let v = self.pop()?;
                    self.extend_top(vec![v], "APPEND", at)?;
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    self.extend_top(items, "APPENDS", at)?;
                }
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push(Py::Int(v as i64));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Py::Int(v as i64));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Py::Int(v as i64));
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?.to_vec();
                    if n > 8 {
                        return Err(err(self.path, at, "integer wider than 64 bits"));
                    }
                    let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) { [0xffu8; 8] } else { [0u8; 8] };
                    buf[..n].copy_from_slice(&b);
                    self.push(Py::Int(i64::from_le_bytes(buf)));
                }
                b'I' | b'L' => {
                    let l = self.line()?;
                    let t = l.trim_end_matches('L');
                    let v = match t {
                        "01" => Py::Bool(true),
                        "00" => Py::Bool(false),
                        _ => Py::Int(t.parse().map_err(|_| err(self.path, at, format!("bad int {l:?}")))?),
                    };
                    self.push(v);
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes"));
                    self.push(Py::Float(v));
                }
                b'F' => {
                    let l = self.line()?;
                    self.push(Py::Float(l.trim().parse().map_err(|_| err(self.path, at, "bad float"))?));
                }
                0x88 => self.push(Py::Bool(true)),
                0x89 => self.push(Py::Bool(false)),
                b'N' => self.push(Py::None),
                0x8c => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?.to_vec();
                    let v = self.utf8(b)?;
                    self.push(v);
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?.to_vec();
                    let v = self.utf8(b)?;
                    self.push(v);
                }
                0x8d => {
                    let n = self.len64()?;
                    let b = self.take(n)?.to_vec();
                    let v = self.utf8(b)?;
                    self.push(v);
                }
                // Python 2 byte strings: kept as str when utf-8, else bytes.
                b'U' | b'T' => {
                    let n = if op == b'U' { self.u8()? as usize } else { self.u32()? as usize };
                    let b = self.take(n)?.to_vec();
                    let v = String::from_utf8(b.clone()).map(Py::Str).unwrap_or(Py::Bytes(b));
                    self.push(v);
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.push(Py::Bytes(b));
                }
                b'B' => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.push(Py::Bytes(b));
                }
                0x8e | 0x96 => {
                    let n = self.len64()?;
                    let b = self.take(n)?.to_vec();
                    self.push(Py::Bytes(b));
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = self.global(&module, &name, at)?;
                    self.push(g);
                }
                0x93 => {
                    let name = self.pop()?.py;
                    let module = self.pop()?.py;
                    match (module, name) {
                        (Py::Str(m), Py::Str(n)) => {
                            let g = self.global(&m, &n, at)?;
                            self.push(g);
                        }
                        _ => return Err(err(self.path, at, "STACK_GLOBAL needs two strings")),
                    }
                }
                b'R' | 0x81 => {
                    let args = self.pop()?.py;
                    let func = self.pop()?.py;
                    let v = self.call(func, args, at)?;
                    self.push(v);
                }
                b'b' => {
                    let state = self.pop()?;
                    let obj = self.pop()?;
                    let (depth, cost) = (obj.depth.max(state.depth), obj.cost.saturating_add(state.cost));
                    let v = self.build(obj.py, state.py, at)?;
                    let v = if matches!(v, Py::Dict(_)) { Val { py: v, depth, cost } } else { Val::leaf(v) };
                    self.stack.push(v);
                }
                b'q' => {
                    let i = self.u8()? as u32;
                    self.memo_put(i, at)?;
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo_put(i, at)?;
                }
                0x94 => {
                    let i = u32::try_from(self.memo.len()).unwrap_or(u32::MAX);
                    self.memo_put(i, at)?;
                }
                b'h' | b'j' => {
                    let i = if op == b'h' { self.u8()? as u32 } else { self.u32()? };
                    let v =
                        self.memo.get(&i).cloned().ok_or_else(|| err(self.path, at, format!("memo {i} not set")))?;
                    let v = self.copy(&v, at)?;
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
            other => return Err(err(self.path, at, format!("cannot call {}", other.a_kind()))),
        };
        let args = match args {
            Py::Tuple(a) => a,
            other => return Err(err(self.path, at, format!("call arguments are {}", other.a_kind()))),
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
                    other => return Err(err(self.path, at, format!("ndarray state is {}", other.a_kind()))),
                };
                let shape = match &s[1] {
                    Py::Tuple(t) => ints(t).ok_or_else(|| err(self.path, at, "bad ndarray shape"))?,
                    _ => return Err(err(self.path, at, "bad ndarray shape")),
                };
                let dtype = match &s[2] {
                    Py::DType(d) => *d,
                    Py::Opaque(d) => return Ok(Py::Opaque(format!("ndarray of {d}"))),
                    other => return Err(err(self.path, at, format!("ndarray dtype is {}", other.a_kind()))),
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
                            format!("ndarray data is {} (object arrays are not supported)", other.a_kind()),
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
            other => Err(err(self.path, at, format!("BUILD on {}", other.a_kind()))),
        }
    }
}

fn make_array(shape: Vec<usize>, dtype: DType, bytes: Vec<u8>) -> std::result::Result<Array, String> {
    // Checked: a shape such as (12, 2^61, 8) wraps to a small byte count otherwise.
    let need = crate::limits::checked_len(&shape, dtype.size())
        .and_then(|n| n.checked_mul(dtype.size()))
        .ok_or_else(|| format!("ndarray shape {shape:?} of {dtype:?} is too large to address; the file is corrupt"))?;
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
