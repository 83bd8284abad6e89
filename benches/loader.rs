//! The AV-MNIST loader against the training step: a generated folder in the real on-disk layout
//! and row shapes, read through the loader and the background prefetcher.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use agm_data::{DatasetId, LoadOptions, LoadedDataset, Prefetcher};
use candle_core::{Device, Result};

/// Writes an AV-MNIST folder of `train` and `test` seeded rows in the real shapes.
pub fn write_avmnist(dir: &Path, train: usize, test: usize, seed: u64) -> std::io::Result<()> {
    agm_data::loaders::avmnist::write_random_folder(dir, train, test, seed)
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

/// Seconds per loader batch and per `avmnist-late` joint step at `batch_size`: the loader reads a
/// generated folder of `rows` training rows; the step is the median of 3 after a warm-up.
pub fn loader_and_step_seconds(rows: usize, batch_size: usize, device: &Device) -> Result<(f64, f64)> {
    let dir = tempfile::tempdir()?;
    write_avmnist(dir.path(), rows, rows / 10, 0)?;
    let per_batch = seconds_per_batch(&load_avmnist(dir.path())?, batch_size, device)?;
    let opts = agm_fusion::PresetOptions::default();
    let batch = crate::preset_batch("avmnist-late", &opts, batch_size, device)?;
    let mut arms = vec![crate::StepBench::for_preset("avmnist-late", &opts, "joint", device)?];
    let per_step = crate::interleaved_medians(&mut arms, &batch, 3)?[0];
    Ok((per_batch, per_step))
}
