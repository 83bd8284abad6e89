//! Datasets, splits held as flat tensors, and seeded batch orders.
//!
//! A split is held in memory as [`SplitTensors`]: one flat `f32` buffer per modality plus the
//! per-sample shape, and `u32` labels. [`SplitTensors::batch`] gathers any index list into an
//! [`agm_core::MultimodalBatch`]; a split with per-sample valid lengths
//! ([`SplitTensors::with_valid_lengths`]) cuts every batch to its longest sample there, so no
//! caller can batch it otherwise. [`epoch_order`] and [`batches`] give the sample order of an
//! epoch and its batch ranges; both are pure functions, so a resumed run sees the same order.

use std::ops::Range;

use agm_core::MultimodalBatch;
use candle_core::{Device, Tensor};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::Result;

/// A random-access collection of samples, independent of any tensor library.
pub trait Dataset {
    /// One sample.
    type Item;

    /// Number of samples.
    fn len(&self) -> usize;

    /// The sample at `index`.
    ///
    /// # Panics
    /// If `index >= self.len()`. `Err` is reserved for real failures (a sample that cannot be
    /// decoded).
    fn get(&self, index: usize) -> Result<Self::Item>;

    /// Whether the dataset holds no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One sample of a [`SplitTensors`]: a flat `f32` vector per modality and the label.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Per modality, the sample's values flattened in C order.
    pub inputs: Vec<Vec<f32>>,
    /// The class label; where a sample has several (AVE's segments,
    /// [`SplitTensors::labels_per_sample`] above 1), the first of them.
    pub label: u32,
}

/// A split held in memory: for each modality a flat `f32` buffer of `len × prod(shape)` values
/// (sample-major, C order) and the per-sample shape; plus one `u32` label per sample.
#[derive(Clone, Debug, PartialEq)]
pub struct SplitTensors {
    data: Vec<Vec<f32>>,
    shapes: Vec<Vec<usize>>,
    labels: Vec<u32>,
    /// Labels per sample: 1, or the segment count for per-segment tasks (AVE).
    labels_per_sample: usize,
    /// Per sample, the leading steps of the time axis that hold data (the rest are zeros);
    /// `None` keeps every batch at the stored shape.
    valid_lengths: Option<Vec<usize>>,
}

impl SplitTensors {
    /// Checks that every modality buffer holds `labels.len()` samples of its shape.
    ///
    /// # Panics
    /// If `data` and `shapes` differ in length or a buffer has the wrong number of values.
    pub fn new(data: Vec<Vec<f32>>, shapes: Vec<Vec<usize>>, labels: Vec<u32>) -> Self {
        assert_eq!(data.len(), shapes.len(), "one shape per modality");
        for (m, (d, s)) in data.iter().zip(&shapes).enumerate() {
            let per: usize = s.iter().product();
            assert_eq!(
                d.len(),
                per * labels.len(),
                "modality {m}: {} values for {} samples of shape {s:?}",
                d.len(),
                labels.len()
            );
        }
        Self { data, shapes, labels, labels_per_sample: 1, valid_lengths: None }
    }

    /// The same samples, each holding data in the first `lengths[i]` steps of every modality's
    /// first (time) axis and zeros after: [`Self::batch`] then cuts each batch on that axis to its
    /// longest sample, as PyTorch's `pad_sequence` collate pads each batch (UR-Funny). The stored
    /// samples keep the full axis.
    ///
    /// # Panics
    /// If `lengths` does not hold one length per sample, the modalities' first axes differ, or a
    /// length is 0 or longer than that axis.
    pub fn with_valid_lengths(self, lengths: Vec<usize>) -> Self {
        assert_eq!(lengths.len(), self.len(), "one valid length per sample");
        let steps = self.time_steps();
        assert!(
            self.shapes.iter().all(|s| s.first() == Some(&steps)),
            "every modality's first axis must be the same time axis: {:?}",
            self.shapes
        );
        if let Some((i, bad)) = lengths.iter().enumerate().find(|&(_, &l)| l == 0 || l > steps) {
            panic!("sample {i}: valid length {bad} is not within 1..={steps}");
        }
        Self { valid_lengths: Some(lengths), ..self }
    }

    /// Each sample's valid length on the time axis, where batches are cut to their longest sample.
    pub fn valid_lengths(&self) -> Option<&[usize]> {
        self.valid_lengths.as_deref()
    }

    /// Whether batches are cut to their longest sample ([`Self::with_valid_lengths`]).
    pub fn pads_per_batch(&self) -> bool {
        self.valid_lengths.is_some()
    }

    /// The stored length of the time axis (the first modality's first axis; 1 without one).
    fn time_steps(&self) -> usize {
        self.shapes.first().and_then(|s| s.first()).copied().unwrap_or(1)
    }

    /// The time steps a batch of `indices` keeps: its longest valid length, or all of them.
    fn batch_steps(&self, indices: &[usize]) -> Option<usize> {
        let lengths = self.valid_lengths.as_ref()?;
        Some(indices.iter().map(|&i| lengths[i]).max().unwrap_or_else(|| self.time_steps()))
    }

    /// The same samples labelled per segment: `labels` holds `per_sample` labels for each sample,
    /// and batches carry `B · per_sample` labels in sample-major order (AVE's segment labels).
    ///
    /// # Panics
    /// If `labels` does not hold `per_sample` labels for every sample.
    pub fn with_segment_labels(self, labels: Vec<u32>, per_sample: usize) -> Self {
        assert_eq!(labels.len(), self.len() * per_sample, "{per_sample} labels per sample");
        Self { labels, labels_per_sample: per_sample, ..self }
    }

    /// Labels per sample (1 unless [`Self::with_segment_labels`] set segments).
    pub fn labels_per_sample(&self) -> usize {
        self.labels_per_sample
    }

    /// The same samples with only modality `m` (for uni-modal baselines and concepts).
    pub fn only_modality(&self, m: usize) -> Self {
        self.select_modalities(&[m])
    }

    /// The same samples with the modalities at `order`, in that order.
    pub fn select_modalities(&self, order: &[usize]) -> Self {
        Self {
            data: order.iter().map(|&m| self.data[m].clone()).collect(),
            shapes: order.iter().map(|&m| self.shapes[m].clone()).collect(),
            labels: self.labels.clone(),
            labels_per_sample: self.labels_per_sample,
            valid_lengths: self.valid_lengths.clone(),
        }
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len() / self.labels_per_sample
    }

    /// Whether the split holds no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Number of modalities.
    pub fn num_modalities(&self) -> usize {
        self.data.len()
    }

    /// Shape of one sample of modality `m` (without the batch dimension).
    pub fn sample_shape(&self, m: usize) -> &[usize] {
        &self.shapes[m]
    }

    /// The flat buffer of modality `m`, all samples.
    pub fn modality_data(&self, m: usize) -> &[f32] {
        &self.data[m]
    }

    /// The values of sample `index` of modality `m`.
    pub fn sample_data(&self, m: usize, index: usize) -> &[f32] {
        let per = self.per_sample(m);
        &self.data[m][index * per..(index + 1) * per]
    }

    /// All labels, in sample order (`labels_per_sample` consecutive labels per sample).
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    fn per_sample(&self, m: usize) -> usize {
        self.shapes[m].iter().product()
    }

    /// Gathers the samples at `indices` (in that order) into a batch on `device`: inputs `f32` of
    /// shape `[B, ..sample_shape]`, labels `u32` of shape `[B · labels_per_sample]` (`[B]` unless
    /// samples have segment labels). With valid lengths the time axis
    /// is cut to the batch's longest one: `[B, L, ..]`.
    ///
    /// An index out of bounds is an error (an empty split asked for its first sample must not
    /// take the process down).
    pub fn batch(&self, indices: &[usize], device: &Device) -> candle_core::Result<MultimodalBatch> {
        check_indices(indices, self.len())?;
        let steps = self.batch_steps(indices);
        let mut inputs = Vec::with_capacity(self.num_modalities());
        for m in 0..self.num_modalities() {
            let per = self.per_sample(m);
            let mut shape = Vec::with_capacity(self.shapes[m].len() + 1);
            shape.push(indices.len());
            shape.extend_from_slice(&self.shapes[m]);
            // Samples are stored time-major, so the kept steps are each sample's leading values.
            let kept = match steps {
                Some(steps) => {
                    shape[1] = steps;
                    per / self.shapes[m][0] * steps
                }
                None => per,
            };
            let mut buf = Vec::with_capacity(kept * indices.len());
            for &i in indices {
                buf.extend_from_slice(&self.data[m][i * per..i * per + kept]);
            }
            inputs.push(Tensor::from_vec(buf, shape, device)?);
        }
        let k = self.labels_per_sample;
        let labels: Vec<u32> = indices.iter().flat_map(|&i| self.labels[i * k..(i + 1) * k].iter().copied()).collect();
        let labels = Tensor::from_vec(labels, indices.len() * k, device)?;
        MultimodalBatch::new(inputs, labels)
    }
}

impl agm_core::BatchSource for SplitTensors {
    fn len(&self) -> usize {
        SplitTensors::len(self)
    }

    fn batch(&self, indices: &[usize], device: &Device) -> candle_core::Result<MultimodalBatch> {
        SplitTensors::batch(self, indices, device)
    }

    fn pads_per_batch(&self) -> bool {
        SplitTensors::pads_per_batch(self)
    }
}

impl Dataset for SplitTensors {
    type Item = Sample;

    fn len(&self) -> usize {
        SplitTensors::len(self)
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let n = SplitTensors::len(self);
        assert!(index < n, "sample index {index} out of bounds for a split of {n} samples");
        Ok(Sample {
            inputs: (0..self.num_modalities()).map(|m| self.sample_data(m, index).to_vec()).collect(),
            label: self.labels[index * self.labels_per_sample],
        })
    }
}

/// Refuses an index past a split of `n` samples (an empty split asked for its first sample must
/// not take the process down).
pub(crate) fn check_indices(indices: &[usize], n: usize) -> candle_core::Result<()> {
    match indices.iter().find(|&&i| i >= n) {
        Some(bad) => Err(candle_core::Error::Msg(format!(
            "sample index {bad} out of bounds for a split of {n} samples; load datasets with agm_data::load, which \
             refuses empty splits"
        ))),
        None => Ok(()),
    }
}

/// The order in which epoch `epoch` visits `n` samples: `0..n` when `shuffle` is false, else a
/// permutation drawn from a ChaCha8 generator seeded with `seed` on stream `epoch`.
///
/// A pure function of its arguments (it uses its own Fisher–Yates shuffle, so it does not change
/// with `rand`'s internals): a resumed run gets the same order.
pub fn epoch_order(n: usize, seed: u64, epoch: usize, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if shuffle {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(epoch as u64);
        shuffle_in_place(&mut order, &mut rng);
    }
    order
}

/// Consecutive ranges of at most `batch_size` positions covering `0..n`; the last, partial
/// batch is kept.
///
/// # Panics
/// If `batch_size` is 0.
pub fn batches(n: usize, batch_size: usize) -> Vec<Range<usize>> {
    assert!(batch_size > 0, "batch size must be positive");
    (0..n).step_by(batch_size).map(|s| s..(s + batch_size).min(n)).collect()
}

/// Fisher–Yates shuffle with an unbiased bounded draw (rejection sampling), independent of
/// `rand`'s shuffle implementation.
pub(crate) fn shuffle_in_place<T>(items: &mut [T], rng: &mut impl RngCore) {
    for i in (1..items.len()).rev() {
        let j = bounded(rng, i as u64 + 1) as usize;
        items.swap(i, j);
    }
}

/// A uniform draw from `0..bound` (`bound > 0`).
fn bounded(rng: &mut impl RngCore, bound: u64) -> u64 {
    let zone = u64::MAX - u64::MAX % bound;
    loop {
        let x = rng.next_u64();
        if x < zone {
            return x % bound;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_with_segment_labels_are_counted_and_read_per_sample() {
        let split = SplitTensors::new(vec![vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]], vec![vec![2]], vec![0, 0, 0])
            .with_segment_labels(vec![1, 2, 3, 4, 5, 6, 7, 8, 9], 3);
        assert_eq!(Dataset::len(&split), 3);
        let last = split.get(2).unwrap();
        assert_eq!((last.inputs, last.label), (vec![vec![4.0, 5.0]], 7));
    }

    #[test]
    fn bounded_stays_in_range() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for b in 1..50 {
            assert!(bounded(&mut rng, b) < b);
        }
    }
}
