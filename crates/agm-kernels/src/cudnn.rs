//! cuDNN's convolutions (forward, backward data, backward filter) for [`crate::conv2d`] on CUDA.
//!
//! cuDNN is opened at run time (`libcudnn.so.9`, from a system install or the
//! `nvidia-cudnn-cu13` wheel on `LD_LIBRARY_PATH`), so a build with the `cuda` feature starts
//! without it; where it is missing [`available`] says why and convolutions take the im2col path.
//! Only the dozen entry points used here are bound, by hand: cudarc's cuDNN bindings link the
//! library at build time when candle turns on cudarc's `dynamic-linking`, which would make
//! cuDNN a start-up requirement.
//!
//! Each convolution shape gets a plan once: descriptors, and per direction the fastest algorithm
//! cuDNN's own benchmark (`cudnnFind*`) reports, as PyTorch's `cudnn.benchmark` does. TF32 is
//! allowed unless the thread's precision is `fp32-strict` ([`crate::Precision`]).

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::{Mutex, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaView, DevicePtr, DevicePtrMut, DeviceRepr};
use candle_core::cuda_backend::CudaDType;
use candle_core::{CudaDevice, CudaStorage, DType, Layout, Result};

use crate::precision::{precision, Precision};

type Handle = *mut c_void;
type Desc = *mut c_void;
type Status = u32;

const NCHW: u32 = 0;
const CROSS_CORRELATION: u32 = 1;
const DATA_FLOAT: u32 = 0;
const DATA_DOUBLE: u32 = 1;
const DATA_BFLOAT16: u32 = 9;
const DEFAULT_MATH: u32 = 0;
const FMA_MATH: u32 = 3;
/// The largest workspace an algorithm may ask for; faster ones that want more are skipped.
const WORKSPACE_LIMIT: usize = 1 << 30;

/// `cudnnConvolution{Fwd,BwdData,BwdFilter}AlgoPerf_t`: the three share this layout.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct AlgoPerf {
    algo: u32,
    status: Status,
    time: f32,
    memory: usize,
    determinism: u32,
    math: u32,
    reserved: [c_int; 3],
}

type FindFn = unsafe extern "C" fn(Handle, Desc, Desc, Desc, Desc, c_int, *mut c_int, *mut AlgoPerf) -> Status;
type RunFn = unsafe extern "C" fn(
    Handle,
    *const c_void,
    Desc,
    *const c_void,
    Desc,
    *const c_void,
    Desc,
    u32,
    *mut c_void,
    usize,
    *const c_void,
    Desc,
    *mut c_void,
) -> Status;

/// The cuDNN entry points agm calls.
struct Api {
    error_string: unsafe extern "C" fn(Status) -> *const c_char,
    create: unsafe extern "C" fn(*mut Handle) -> Status,
    set_stream: unsafe extern "C" fn(Handle, *mut c_void) -> Status,
    create_tensor: unsafe extern "C" fn(*mut Desc) -> Status,
    set_tensor_4d: unsafe extern "C" fn(Desc, u32, u32, c_int, c_int, c_int, c_int) -> Status,
    create_filter: unsafe extern "C" fn(*mut Desc) -> Status,
    set_filter_4d: unsafe extern "C" fn(Desc, u32, u32, c_int, c_int, c_int, c_int) -> Status,
    create_conv: unsafe extern "C" fn(*mut Desc) -> Status,
    set_conv_2d: unsafe extern "C" fn(Desc, c_int, c_int, c_int, c_int, c_int, c_int, u32, u32) -> Status,
    set_conv_math: unsafe extern "C" fn(Desc, u32) -> Status,
    /// Forward, backward data, backward filter, in [`Direction`] order.
    find: [FindFn; 3],
    run: [RunFn; 3],
    /// Keeps the symbols above valid.
    _lib: libloading::Library,
}

impl Api {
    fn load() -> std::result::Result<Self, String> {
        const NAMES: [&str; 2] = ["libcudnn.so.9", "libcudnn.so"];
        // SAFETY: loading cuDNN runs its initialisers, which only set up its own state.
        let lib = NAMES
            .iter()
            .find_map(|&name| unsafe { libloading::Library::new(name) }.ok())
            .ok_or_else(|| "cuDNN (libcudnn.so.9) was not found on the library path".to_string())?;
        /// A symbol as a function pointer of the type the field declares.
        fn sym<F: Copy>(lib: &libloading::Library, name: &str) -> std::result::Result<F, String> {
            // SAFETY: each field's type is the C signature of the cuDNN 9 function it names.
            unsafe { lib.get::<F>(name.as_bytes()) }.map(|s| *s).map_err(|e| format!("cuDNN lacks {name}: {e}"))
        }
        Ok(Self {
            error_string: sym(&lib, "cudnnGetErrorString")?,
            create: sym(&lib, "cudnnCreate")?,
            set_stream: sym(&lib, "cudnnSetStream")?,
            create_tensor: sym(&lib, "cudnnCreateTensorDescriptor")?,
            set_tensor_4d: sym(&lib, "cudnnSetTensor4dDescriptor")?,
            create_filter: sym(&lib, "cudnnCreateFilterDescriptor")?,
            set_filter_4d: sym(&lib, "cudnnSetFilter4dDescriptor")?,
            create_conv: sym(&lib, "cudnnCreateConvolutionDescriptor")?,
            set_conv_2d: sym(&lib, "cudnnSetConvolution2dDescriptor")?,
            set_conv_math: sym(&lib, "cudnnSetConvolutionMathType")?,
            find: [
                sym(&lib, "cudnnFindConvolutionForwardAlgorithm")?,
                sym(&lib, "cudnnFindConvolutionBackwardDataAlgorithm")?,
                sym(&lib, "cudnnFindConvolutionBackwardFilterAlgorithm")?,
            ],
            run: [
                sym(&lib, "cudnnConvolutionForward")?,
                sym(&lib, "cudnnConvolutionBackwardData")?,
                sym(&lib, "cudnnConvolutionBackwardFilter")?,
            ],
            _lib: lib,
        })
    }

    fn check(&self, status: Status, what: &str) -> Result<()> {
        if status == 0 {
            return Ok(());
        }
        // SAFETY: cudnnGetErrorString returns a static string for any status.
        let text = unsafe { CStr::from_ptr((self.error_string)(status)) }.to_string_lossy();
        candle_core::bail!("cuDNN {what}: {text} ({status})")
    }
}

fn api() -> std::result::Result<&'static Api, &'static str> {
    static API: OnceLock<std::result::Result<Api, String>> = OnceLock::new();
    API.get_or_init(Api::load).as_ref().map_err(String::as_str)
}

/// Why cuDNN stopped being used after it failed a convolution, if it did.
static FAILED: OnceLock<String> = OnceLock::new();

/// Whether convolutions on CUDA run through cuDNN: `Err` says why not (they then take the im2col
/// path). `AGM_CUDNN=0` turns cuDNN off.
pub fn available() -> std::result::Result<(), String> {
    if std::env::var("AGM_CUDNN").is_ok_and(|v| v == "0") {
        return Err("cuDNN is turned off (AGM_CUDNN=0)".into());
    }
    if let Some(why) = FAILED.get() {
        return Err(why.clone());
    }
    api().map(|_| ()).map_err(str::to_string)
}

/// Stops using cuDNN for the rest of the process after `error`, so a cuDNN that loads but
/// cannot run a convolution costs one failed call, not the run.
pub(crate) fn give_up(error: &candle_core::Error) {
    let _ = FAILED.set(format!("a cuDNN convolution failed, so the im2col path runs instead: {error}"));
}

/// A convolution's direction; the index into [`Api::find`] and [`Api::run`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Direction {
    Forward = 0,
    BackwardData = 1,
    BackwardFilter = 2,
}

/// One convolution's shapes: input `[b, c, h, w]`, kernel `[o, c, kh, kw]`, output `[b, o, oh, ow]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Shapes {
    pub input: [usize; 4],
    pub kernel: [usize; 4],
    pub output: [usize; 4],
    pub stride: usize,
    pub pad: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct PlanKey {
    device: candle_core::cuda_backend::DeviceId,
    shapes: Shapes,
    data: u32,
    strict: bool,
}

/// An algorithm picked for one direction, the math it runs in and its workspace.
#[derive(Clone, Copy)]
struct Choice {
    algo: u32,
    math: u32,
    workspace: usize,
}

/// The descriptors of one convolution and the algorithms found so far.
struct Plan {
    x: Desc,
    w: Desc,
    y: Desc,
    conv: Desc,
    chosen: [Option<Choice>; 3],
}

/// cuDNN state: one handle per device, one plan per shape. Descriptors and handles are plain
/// pointers cuDNN owns; they are only used under this lock.
struct State {
    handles: HashMap<candle_core::cuda_backend::DeviceId, Handle>,
    plans: HashMap<PlanKey, Plan>,
}

// SAFETY: the pointers are used only while the mutex is held, one thread at a time; cuDNN
// handles and descriptors may move between threads.
unsafe impl Send for State {}

fn state() -> &'static Mutex<State> {
    static STATE: OnceLock<Mutex<State>> = OnceLock::new();
    STATE.get_or_init(|| Mutex::new(State { handles: HashMap::new(), plans: HashMap::new() }))
}

fn c(v: usize) -> Result<c_int> {
    c_int::try_from(v).map_err(|_| candle_core::Error::Msg(format!("cuDNN: size {v} is too large")))
}

impl State {
    fn handle(&mut self, api: &Api, dev: &CudaDevice) -> Result<Handle> {
        if let Some(&h) = self.handles.get(&dev.id()) {
            return Ok(h);
        }
        let mut h: Handle = std::ptr::null_mut();
        // SAFETY: cudnnCreate writes a new handle; the stream is the device's, which lives as
        // long as the device (the handle is kept for the process).
        unsafe {
            api.check((api.create)(&mut h), "create")?;
            api.check((api.set_stream)(h, dev.cuda_stream().cu_stream() as *mut c_void), "set stream")?;
        }
        self.handles.insert(dev.id(), h);
        Ok(h)
    }

    fn plan(&mut self, api: &Api, key: PlanKey) -> Result<&mut Plan> {
        match self.plans.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
            std::collections::hash_map::Entry::Vacant(e) => Ok(e.insert(Plan::new(api, key)?)),
        }
    }
}

impl Plan {
    /// The descriptors of `key`'s convolution; algorithms are found on first use.
    fn new(api: &Api, key: PlanKey) -> Result<Self> {
        let s = key.shapes;
        let compute = if key.data == DATA_DOUBLE { DATA_DOUBLE } else { DATA_FLOAT };
        let mut plan = Plan {
            x: std::ptr::null_mut(),
            w: std::ptr::null_mut(),
            y: std::ptr::null_mut(),
            conv: std::ptr::null_mut(),
            chosen: [None; 3],
        };
        let [b, ch, h, w] = s.input;
        let [o, _, kh, kw] = s.kernel;
        let [_, _, oh, ow] = s.output;
        // SAFETY: each create writes a new descriptor that the following set fills in.
        unsafe {
            api.check((api.create_tensor)(&mut plan.x), "tensor descriptor")?;
            api.check((api.set_tensor_4d)(plan.x, NCHW, key.data, c(b)?, c(ch)?, c(h)?, c(w)?), "input")?;
            api.check((api.create_tensor)(&mut plan.y), "tensor descriptor")?;
            api.check((api.set_tensor_4d)(plan.y, NCHW, key.data, c(b)?, c(o)?, c(oh)?, c(ow)?), "output")?;
            api.check((api.create_filter)(&mut plan.w), "filter descriptor")?;
            api.check((api.set_filter_4d)(plan.w, key.data, NCHW, c(o)?, c(ch)?, c(kh)?, c(kw)?), "kernel")?;
            api.check((api.create_conv)(&mut plan.conv), "convolution descriptor")?;
            let (p, st) = (c(s.pad)?, c(s.stride)?);
            api.check((api.set_conv_2d)(plan.conv, p, p, st, st, 1, 1, CROSS_CORRELATION, compute), "convolution")?;
            let math = if key.strict { FMA_MATH } else { DEFAULT_MATH };
            api.check((api.set_conv_math)(plan.conv, math), "math type")?;
        }
        Ok(plan)
    }
}

/// The cuDNN data type of a storage dtype.
fn data_type(dtype: DType) -> Result<u32> {
    match dtype {
        DType::F32 => Ok(DATA_FLOAT),
        DType::F64 => Ok(DATA_DOUBLE),
        DType::BF16 => Ok(DATA_BFLOAT16),
        d => candle_core::bail!("cuDNN convolution: dtype {d:?} is not supported"),
    }
}

/// One convolution call: `Forward` reads `(x, w)` and writes `y`; `BackwardData` reads `(w, dy)`
/// and writes `dx`; `BackwardFilter` reads `(x, dy)` and writes `dw`. `a` and `b` are the two
/// operands in that order, contiguous; the result is a new storage of `out_len` elements.
pub(crate) struct Call<'a> {
    pub direction: Direction,
    pub shapes: Shapes,
    pub a: (&'a CudaStorage, &'a Layout),
    pub b: (&'a CudaStorage, &'a Layout),
    pub out_len: usize,
}

/// Runs `call` through cuDNN.
pub(crate) fn run(call: Call<'_>) -> Result<CudaStorage> {
    let api = api().map_err(|e| candle_core::Error::Msg(format!("cuDNN convolution: {e}")))?;
    let (a, b) = (call.a.0, call.b.0);
    if a.dtype() != b.dtype() {
        candle_core::bail!("cuDNN convolution: operand dtypes differ ({:?}, {:?})", a.dtype(), b.dtype());
    }
    match a.dtype() {
        DType::F32 => typed::<f32>(api, call),
        DType::F64 => typed::<f64>(api, call),
        DType::BF16 => typed::<half::bf16>(api, call),
        d => candle_core::bail!("cuDNN convolution: dtype {d:?} is not supported"),
    }
}

/// The elements of a contiguous operand.
fn contiguous<'a, T: CudaDType + DeviceRepr>(s: &'a CudaStorage, l: &Layout) -> Result<CudaView<'a, T>> {
    let data = s.as_cuda_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(data.slice(start..end)),
        None => candle_core::bail!("cuDNN convolution: operands must be contiguous"),
    }
}

fn typed<T: CudaDType + DeviceRepr>(api: &Api, call: Call<'_>) -> Result<CudaStorage> {
    let Call { direction, shapes, a: (a, al), b: (b, bl), out_len } = call;
    let dev = a.device().clone();
    let stream = dev.cuda_stream();
    let (va, vb) = (contiguous::<T>(a, al)?, contiguous::<T>(b, bl)?);
    // SAFETY: the direction's call writes every one of the `out_len` output elements (beta = 0).
    let mut out = unsafe { dev.alloc::<T>(out_len.max(1)) }?;
    let key =
        PlanKey { device: dev.id(), shapes, data: data_type(a.dtype())?, strict: precision() == Precision::Fp32Strict };
    let mut st = state().lock().unwrap_or_else(|e| e.into_inner());
    let handle = st.handle(api, &dev)?;
    let plan = st.plan(api, key)?;
    let d = direction as usize;
    // The descriptors in the order this direction's find and run take them.
    let (in1, in2, out_desc) = match direction {
        Direction::Forward => (plan.x, plan.w, plan.y),
        Direction::BackwardData => (plan.w, plan.y, plan.x),
        Direction::BackwardFilter => (plan.x, plan.y, plan.w),
    };
    let choice = match plan.chosen[d] {
        Some(choice) => choice,
        None => {
            let mut perf = [AlgoPerf::default(); 8];
            let mut found: c_int = 0;
            // SAFETY: the descriptors are this plan's; cuDNN writes at most 8 results.
            unsafe {
                api.check(
                    (api.find[d])(handle, in1, in2, plan.conv, out_desc, 8, &mut found, perf.as_mut_ptr()),
                    "algorithm search",
                )?;
            }
            let best = perf[..found.max(0) as usize]
                .iter()
                .find(|p| p.status == 0 && p.memory <= WORKSPACE_LIMIT)
                .ok_or_else(|| candle_core::Error::Msg(format!("cuDNN: no {direction:?} algorithm for {shapes:?}")))?;
            let math = if key.strict { FMA_MATH } else { best.math };
            let choice = Choice { algo: best.algo, math, workspace: best.memory };
            plan.chosen[d] = Some(choice);
            choice
        }
    };
    // SAFETY: a workspace cuDNN may scribble on; its contents are never read by agm.
    let mut workspace = unsafe { dev.alloc::<u8>(choice.workspace.max(1)) }?;
    let (pa, read_a) = va.device_ptr(&stream);
    let (pb, read_b) = vb.device_ptr(&stream);
    let (po, write_out) = out.device_ptr_mut(&stream);
    let (pw, write_workspace) = workspace.device_ptr_mut(&stream);
    let (one32, zero32, one64, zero64) = (1f32, 0f32, 1f64, 0f64);
    let (alpha, beta): (*const c_void, *const c_void) = if key.data == DATA_DOUBLE {
        ((&one64 as *const f64).cast(), (&zero64 as *const f64).cast())
    } else {
        ((&one32 as *const f32).cast(), (&zero32 as *const f32).cast())
    };
    // SAFETY: the pointers are device buffers of the shapes the descriptors state, on the stream
    // the handle runs on; the workspace is as large as the chosen algorithm asked.
    unsafe {
        api.check((api.set_conv_math)(plan.conv, choice.math), "math type")?;
        api.check(
            (api.run[d])(
                handle,
                alpha,
                in1,
                pa as *const c_void,
                in2,
                pb as *const c_void,
                plan.conv,
                choice.algo,
                pw as *mut c_void,
                choice.workspace,
                beta,
                out_desc,
                po as *mut c_void,
            ),
            "convolution",
        )?;
    }
    // The stream-order records go after the call is queued, then the workspace (its memory
    // returns to the stream-ordered pool, so the call finishes before it is reused).
    drop((read_a, read_b, write_out, write_workspace));
    drop(workspace);
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}
