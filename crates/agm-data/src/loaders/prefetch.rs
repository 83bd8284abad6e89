//! A background prefetch thread over any [`BatchSource`].

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use agm_core::{BatchSource, MultimodalBatch};
use candle_core::Device;

/// Gathers the batches of one epoch on a background thread, `depth` ahead of the consumer,
/// in exactly the order given (so results do not depend on thread timing).
///
/// ```
/// use std::sync::Arc;
/// use agm_data::{batches, epoch_order, loaders::prefetch::Prefetcher, SplitTensors};
/// let split = Arc::new(SplitTensors::new(vec![vec![0.0; 10]], vec![vec![2]], vec![0, 1, 0, 1, 0]));
/// let order = epoch_order(5, 7, 0, true);
/// let got: Vec<_> = Prefetcher::new(split, order, 2, candle_core::Device::Cpu, 2).collect::<Result<_, _>>()?;
/// assert_eq!(got.len(), 3);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub struct Prefetcher {
    rx: Option<Receiver<candle_core::Result<MultimodalBatch>>>,
    handle: Option<JoinHandle<()>>,
}

impl Prefetcher {
    /// Starts the thread. `order` is the epoch's sample order (e.g. [`crate::epoch_order`]);
    /// batches are consecutive chunks of `batch_size` (last one partial).
    ///
    /// # Panics
    /// If `batch_size` or `depth` is 0.
    pub fn new<S>(source: Arc<S>, order: Vec<usize>, batch_size: usize, device: Device, depth: usize) -> Self
    where
        S: BatchSource + Send + Sync + 'static + ?Sized,
    {
        assert!(batch_size > 0 && depth > 0, "batch size and depth must be positive");
        let (tx, rx) = sync_channel(depth);
        let handle = std::thread::Builder::new()
            .name("agm-prefetch".into())
            .spawn(move || {
                for chunk in order.chunks(batch_size) {
                    if tx.send(source.batch(chunk, &device)).is_err() {
                        break;
                    }
                }
            })
            .expect("spawn the prefetch thread");
        Self { rx: Some(rx), handle: Some(handle) }
    }
}

impl Iterator for Prefetcher {
    type Item = candle_core::Result<MultimodalBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        self.rx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
