//! What a convolution keeps for its backward pass: its input (which candle's graph holds anyway),
//! not its im2col columns, which are `kh·kw / stride²` times larger. Measured as live heap bytes
//! under a counting allocator, so the test is about behaviour, not timing. One test in this binary,
//! so no other test's allocations run concurrently with the count.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use agm_kernels::{conv2d, conv2d_ref, Conv2dSpec};
use candle_core::{DType, Device, Result, Tensor, Var};

static LIVE: AtomicIsize = AtomicIsize::new(0);

/// The system allocator, counting live bytes.
struct Counting;

// SAFETY: every call forwards to the system allocator unchanged; the counter is an atomic.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::SeqCst);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::SeqCst);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for `alloc`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::SeqCst);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::SeqCst);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::SeqCst)
}

fn ramp(dims: &[usize], scale: f32) -> Result<Tensor> {
    let n: usize = dims.iter().product();
    let values: Vec<f32> = (0..n).map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * scale).collect();
    Tensor::from_vec(values, dims, &Device::Cpu)
}

/// A forward pass whose graph is kept for the backward grows the heap by its output alone (plus a
/// few small allocations): the old op kept its columns, 9× the input for a 3×3 kernel at stride 1
/// and 2.25× at stride 2. On 2 threads a batch of 9 runs 8 samples by group and one more as one
/// GEMM, appended to the output without growing its capacity. The gradients the recomputed
/// columns give still match candle's conv.
#[test]
fn a_convolution_saves_its_input_not_its_columns() -> Result<()> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("thread pool");
    pool.install(|| {
        for batch in [8, 9] {
            for (stride, padding) in [(1, 1), (2, 1)] {
                convolution_keeps_its_output(batch, Conv2dSpec::new(stride, padding))?;
            }
        }
        Ok(())
    })
}

fn convolution_keeps_its_output(batch: usize, spec: Conv2dSpec) -> Result<()> {
    let stride = spec.stride;
    let x = Var::from_tensor(&ramp(&[batch, 32, 28, 28], 1.0)?)?;
    let w = Var::from_tensor(&ramp(&[48, 32, 3, 3], 0.1)?)?;
    // Warm-up: thread pools and GEMM scratch space are allocated once, outside the count.
    let warm = conv2d(x.as_tensor(), w.as_tensor(), spec)?;
    warm.sum_all()?.backward()?;
    drop(warm);

    let before = live();
    let y = conv2d(x.as_tensor(), w.as_tensor(), spec)?;
    let growth = live() - before;
    let input_bytes = (x.elem_count() * DType::F32.size_in_bytes()) as isize;
    let output_bytes = (y.elem_count() * DType::F32.size_in_bytes()) as isize;
    let columns_bytes = input_bytes * 9 / (stride * stride) as isize;
    assert!(
        growth <= output_bytes + input_bytes / 8,
        "batch {batch}, stride {stride}: a forward pass kept {growth} bytes live for an output of {output_bytes} bytes \
         (input {input_bytes}, im2col columns {columns_bytes})"
    );

    let grads = y.sum_all()?.backward()?;
    let reference = conv2d_ref(x.as_tensor(), w.as_tensor(), spec)?;
    let reference_grads = reference.sum_all()?.backward()?;
    for (name, v) in [("input", &x), ("kernel", &w)] {
        let ours = grads.get(v.as_tensor()).expect("a gradient");
        let theirs = reference_grads.get(v.as_tensor()).expect("a reference gradient");
        let diff = (ours - theirs)?.abs()?.max_all()?.to_scalar::<f32>()?;
        let size = theirs.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff <= 1e-4 * size.max(1.0), "batch {batch}, stride {stride}: {name} gradient differs by {diff}");
    }
    Ok(())
}
