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
    /// the label rows are not a positive multiple of `B` (an empty batch has no label rows). With
    /// no input at all nothing is checked.
    pub fn new(inputs: Vec<Tensor>, labels: Tensor) -> Result<Self> {
        let rows = labels.dim(0)?;
        let b = inputs.first().map(|x| x.dim(0)).transpose()?.unwrap_or(rows);
        for (m, x) in inputs.iter().enumerate() {
            if x.dim(0)? != b || (b == 0) != (rows == 0) || b != 0 && rows % b != 0 {
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

#[cfg(test)]
mod tests {
    use super::MultimodalBatch;
    use candle_core::{Device, Tensor};

    #[test]
    fn labels_must_be_a_positive_multiple_of_the_batch_size() {
        let x = |b: usize| Tensor::zeros((b, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        let y = |n: usize| Tensor::zeros(n, candle_core::DType::U32, &Device::Cpu).unwrap();
        for (b, n, ok) in [(3, 3, true), (3, 6, true), (0, 0, true), (3, 0, false), (3, 4, false), (0, 2, false)] {
            let got = MultimodalBatch::new(vec![x(b), x(b)], y(n));
            assert_eq!(got.is_ok(), ok, "batch {b}, {n} labels");
            if let Err(e) = got {
                assert!(e.to_string().contains(&format!("batch size {b} but there are {n} labels")), "{e}");
            }
        }
        let err = MultimodalBatch::new(vec![x(3), x(2)], y(3)).unwrap_err().to_string();
        assert!(err.contains("modality 1 has batch size 2"), "{err}");
    }
}
