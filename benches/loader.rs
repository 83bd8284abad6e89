//! The AV-MNIST loader against the training step: a generated folder in the real on-disk layout
//! and row shapes, read through the loader and the background prefetcher.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use agm_data::loaders::array::write_npy;
use agm_data::{DatasetId, LoadOptions, LoadedDataset, Prefetcher};
use candle_core::{Device, Result};
use rand::{Rng, SeedableRng};

/// Writes an AV-MNIST folder (`audio/`, `image/` arrays and label files) with `train` and `test`
/// rows of the real shapes: 112×112 `u8` spectrograms and 784 `f32` pixels (MultiBench's dtypes).
pub fn write_avmnist(dir: &Path, train: usize, test: usize, seed: u64) -> std::io::Result<()> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for (split, rows) in [("train", train), ("test", test)] {
        let audio: Vec<u8> = (0..rows * 112 * 112).map(|_| rng.random()).collect();
        write_npy(&dir.join(format!("audio/{split}_data.npy")), "|u1", &[rows, 112, 112], &audio)?;
        let image: Vec<u8> = (0..rows * 784).flat_map(|_| rng.random_range(0.0f32..255.0).to_le_bytes()).collect();
        write_npy(&dir.join(format!("image/{split}_data.npy")), "<f4", &[rows, 784], &image)?;
        let labels: Vec<u8> = (0..rows).flat_map(|_| (rng.random_range(0..10i64)).to_le_bytes()).collect();
        write_npy(&dir.join(format!("{split}_labels.npy")), "<i8", &[rows], &labels)?;
    }
    Ok(())
}

/// Loads a folder written by [`write_avmnist`].
pub fn load_avmnist(dir: &Path) -> Result<LoadedDataset> {
    agm_data::load(DatasetId::AvMnist, dir, &LoadOptions::default()).map_err(|e| candle_core::Error::Msg(e.to_string()))
}

/// Seconds per batch of one shuffled epoch over the training split, read through the prefetcher.
pub fn seconds_per_batch(data: &LoadedDataset, batch_size: usize, device: &Device) -> Result<f64> {
    let order = agm_data::epoch_order(data.train.len(), 0, 0, true);
    let source = Arc::new(data.train.clone());
    let started = Instant::now();
    let mut batches = 0usize;
    for batch in Prefetcher::new(source, order, batch_size, device.clone(), 2) {
        let batch = batch?;
        assert_eq!(batch.inputs[0].dims()[1..], [1, 112, 112]);
        batches += 1;
    }
    Ok(started.elapsed().as_secs_f64() / batches.max(1) as f64)
}
