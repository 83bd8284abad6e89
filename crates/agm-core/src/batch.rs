//! A batch of multimodal samples.

use candle_core::{Result, Tensor};

/// One batch: an input tensor per modality (batch first, in [`crate::ModalitySet`] order) and
/// the class labels (`u32`, shape `[B]`, or `[B · S]` for tasks labelled per segment, sample-major;
/// the model's logits then have one row per segment).
#[derive(Clone, Debug)]
pub struct MultimodalBatch {
    /// One tensor per modality, batch first (`[B, ...]`), in modality order.
    pub inputs: Vec<Tensor>,
    /// Class ids, `[B]`, or `[B · S]` sample-major for per-segment labels.
    pub labels: Tensor,
}

impl MultimodalBatch {
    /// A batch of `inputs` and `labels`. Errs when the inputs disagree on the batch size `B` or
    /// the label rows are not a multiple of `B` (zero rows are one). With no input at all nothing
    /// is checked.
    pub fn new(inputs: Vec<Tensor>, labels: Tensor) -> Result<Self> {
        let rows = labels.dim(0)?;
        let b = inputs.first().map(|x| x.dim(0)).transpose()?.unwrap_or(rows);
        for (m, x) in inputs.iter().enumerate() {
            if x.dim(0)? != b || b == 0 && rows != 0 || b != 0 && rows % b != 0 {
                candle_core::bail!("modality {m} has batch size {} but there are {rows} labels", x.dim(0)?);
            }
        }
        Ok(Self { inputs, labels })
    }

    /// Label rows: the batch size, or batch size × segments.
    pub fn len(&self) -> usize {
        self.labels.dims().first().copied().unwrap_or(0)
    }

    /// Whether there are no label rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The same samples moved to another device (and dtype for float inputs).
    pub fn to_device(&self, device: &candle_core::Device) -> Result<Self> {
        Ok(Self {
            inputs: self.inputs.iter().map(|x| x.to_device(device)).collect::<Result<_>>()?,
            labels: self.labels.to_device(device)?,
        })
    }
}

/// A split that hands out batches by sample index (tensor-agnostic datasets implement it in
/// agm-data).
pub trait BatchSource {
    /// Number of samples in the split.
    fn len(&self) -> usize;
    /// The samples at `indices`, in that order. Panics if an index is out of bounds.
    fn batch(&self, indices: &[usize], device: &candle_core::Device) -> Result<MultimodalBatch>;
    /// Whether the split has no sample.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Whether each batch is cut to its longest sample (sequences right-padded per batch, as
    /// PyTorch's `pad_sequence` collate does). A sample's inputs then depend on which samples
    /// share its batch, so evaluation must batch as the reference does.
    fn pads_per_batch(&self) -> bool {
        false
    }
}

impl<T: BatchSource + ?Sized> BatchSource for &T {
    fn len(&self) -> usize {
        (**self).len()
    }
    fn batch(&self, indices: &[usize], device: &candle_core::Device) -> Result<MultimodalBatch> {
        (**self).batch(indices, device)
    }
    fn pads_per_batch(&self) -> bool {
        (**self).pads_per_batch()
    }
}
