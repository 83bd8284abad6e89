//! [`backward`]: candle's backward pass, with the parameter gradients of agm's ops kept out of
//! candle's gradient accumulation.
//!
//! candle 0.11 stores every gradient as `zeros_like(t) + grad`: for a ResNet-18 pair (25 M
//! parameters) that is 100 MB zero-filled on one thread and added again on every step, about a
//! tenth of a batch-8 training step. While [`backward`] runs, agm's ops hand the gradients of
//! their parameters (variables) to a per-thread collector instead, and [`backward`] puts them
//! into the store afterwards; the result is the same store. Outside [`backward`] (a plain
//! `loss.backward()`) the ops return every gradient to candle as usual.

use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, TensorId};

/// The gradients collected so far in this thread's open [`backward`], by variable.
type Collected = HashMap<TensorId, (Tensor, Tensor)>;

thread_local! {
    static COLLECTOR: RefCell<Option<Collected>> = const { RefCell::new(None) };
}

/// Puts back the collector an enclosing [`backward`] had open (or none) when dropped, also when
/// candle's backward fails.
struct RestoreOuter(Option<Collected>);

impl Drop for RestoreOuter {
    fn drop(&mut self) {
        let outer = self.0.take();
        COLLECTOR.with(|c| *c.borrow_mut() = outer);
    }
}

/// `loss.backward()`, with the same result, faster for models built from agm's ops.
pub fn backward(loss: &Tensor) -> Result<GradStore> {
    let _restore = RestoreOuter(COLLECTOR.with(|c| c.replace(Some(HashMap::new()))));
    let mut store = loss.backward()?;
    let collected = COLLECTOR.with(|c| c.borrow_mut().take()).unwrap_or_default();
    for (var, grad) in collected.into_values() {
        let grad = match store.remove(&var) {
            Some(from_candle) => (from_candle + grad)?,
            None => grad,
        };
        store.insert(&var, grad);
    }
    Ok(store)
}

/// The gradient `grad` of `param` as an op's backward returns it to candle: `None` when it went
/// to the open [`backward`]'s collector (only variables go there: a computed parameter passes
/// its gradient on through candle's graph).
pub(crate) fn param_grad(param: &Tensor, grad: Tensor) -> Result<Option<Tensor>> {
    if !param.is_variable() {
        return Ok(Some(grad));
    }
    COLLECTOR.with(|c| {
        let mut c = c.borrow_mut();
        let Some(collected) = c.as_mut() else { return Ok(Some(grad)) };
        match collected.entry(param.id()) {
            Entry::Occupied(mut e) => {
                let (_, earlier) = e.get_mut();
                // The collector holds the only reference to an op's fresh gradient, so on the
                // CPU the second one is added into it in place: no new buffer, and no pass
                // through candle's thread pool.
                if earlier.device().is_cpu() && earlier.is_contiguous() && grad.dims() == earlier.dims() {
                    earlier.inplace_op2(&grad.contiguous()?, &AddAssign)?;
                } else {
                    *earlier = (&*earlier + grad)?;
                }
            }
            Entry::Vacant(e) => {
                e.insert((param.clone(), grad));
            }
        }
        Ok(None)
    })
}

/// `a += b` elementwise, in place on `a` (f32 and f64 on the CPU), in parallel chunks.
struct AddAssign;

impl candle_core::InplaceOp2 for AddAssign {
    fn name(&self) -> &'static str {
        "agm-add-assign"
    }

    fn cpu_fwd(
        &self,
        a: &mut candle_core::CpuStorage,
        al: &candle_core::Layout,
        b: &candle_core::CpuStorage,
        bl: &candle_core::Layout,
    ) -> Result<()> {
        use crate::cpu::{dispatch_real, for_each_chunk, slice, slice_mut};
        const CHUNK: usize = 1 << 15;
        dispatch_real!(b, self.name(), T => {
            let b = slice::<T>(b, bl, self.name())?;
            let a = slice_mut::<T>(a, al, b.len(), self.name())?;
            for_each_chunk(a, CHUNK, CHUNK, |i, a| {
                let b = &b[i * CHUNK..i * CHUNK + a.len()];
                for (x, &y) in a.iter_mut().zip(b) {
                    *x += y;
                }
            });
            Ok(())
        })
    }
}
