//! Train-time augmentation: CREMA-D's `RandomResizedCrop` + `RandomHorizontalFlip` on frames.
//!
//! The reference crops the decoded jpeg; the loader here keeps frames already resized to the
//! model's side, so the crop is taken from that image and resized back (bilinear). The draw of
//! each batch is seeded by the run seed and the batch's sample indices, so a resumed run sees
//! the same augmented batches. A split read in the same order every epoch (`shuffle = false`)
//! therefore gets the same crops every epoch, where the reference draws new ones; the CREMA-D
//! recipes shuffle, as the reference does.

use agm_core::{BatchSource, MultimodalBatch};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::SplitTensors;

/// A split whose frames of one modality are randomly cropped and flipped in every batch.
pub struct RandomResizedCropFlip<'a> {
    split: &'a SplitTensors,
    /// The frames modality: samples `[C, T, S, S]` or `[C, S, S]`.
    modality: usize,
    seed: u64,
    /// torchvision's defaults: area scale (0.08, 1), aspect ratio (3/4, 4/3).
    scale: (f64, f64),
    ratio: (f64, f64),
}

impl<'a> RandomResizedCropFlip<'a> {
    /// Crops and flips modality `modality` of `split` (samples `[C, T, S, S]` or `[C, S, S]`) with
    /// torchvision's `RandomResizedCrop` defaults (area scale 0.08 to 1, aspect ratio 3/4 to 4/3)
    /// and a horizontal flip with probability 1/2; one draw per sample, shared by its channels and
    /// frames. `seed` is the run seed; the other modalities pass through unchanged.
    pub fn new(split: &'a SplitTensors, modality: usize, seed: u64) -> Self {
        Self { split, modality, seed, scale: (0.08, 1.0), ratio: (3.0 / 4.0, 4.0 / 3.0) }
    }

    /// torchvision's crop choice: ten tries at a random area and aspect ratio, else the whole
    /// image clipped to the ratio range. Returns (top, left, height, width).
    fn crop_box(&self, rng: &mut ChaCha8Rng, h: usize, w: usize) -> (usize, usize, usize, usize) {
        let area = (h * w) as f64;
        let (lr0, lr1) = (self.ratio.0.ln(), self.ratio.1.ln());
        for _ in 0..10 {
            let target = area * rng.random_range(self.scale.0..=self.scale.1);
            let ratio = rng.random_range(lr0..=lr1).exp();
            let cw = (target * ratio).sqrt().round() as usize;
            let ch = (target / ratio).sqrt().round() as usize;
            if cw > 0 && ch > 0 && cw <= w && ch <= h {
                return (rng.random_range(0..=h - ch), rng.random_range(0..=w - cw), ch, cw);
            }
        }
        let in_ratio = w as f64 / h as f64;
        let (ch, cw) = if in_ratio < self.ratio.0 {
            ((w as f64 / self.ratio.0).round() as usize, w)
        } else if in_ratio > self.ratio.1 {
            (h, (h as f64 * self.ratio.1).round() as usize)
        } else {
            (h, w)
        };
        ((h - ch) / 2, (w - cw) / 2, ch, cw)
    }

    /// Crops `plane` (`h × w`) to the box, resizes it back to `h × w` bilinearly
    /// (align_corners = false), flipping horizontally if asked.
    fn resample(plane: &[f32], h: usize, w: usize, bx: (usize, usize, usize, usize), flip: bool, out: &mut [f32]) {
        let (top, left, ch, cw) = bx;
        let sy = ch as f64 / h as f64;
        let sx = cw as f64 / w as f64;
        for oy in 0..h {
            let y = ((oy as f64 + 0.5) * sy - 0.5).clamp(0.0, (ch - 1) as f64);
            let (y0, fy) = (y.floor() as usize, y - y.floor());
            let y1 = (y0 + 1).min(ch - 1);
            for ox in 0..w {
                let x = ((ox as f64 + 0.5) * sx - 0.5).clamp(0.0, (cw - 1) as f64);
                let (x0, fx) = (x.floor() as usize, x - x.floor());
                let x1 = (x0 + 1).min(cw - 1);
                let at = |yy: usize, xx: usize| plane[(top + yy) * w + left + xx] as f64;
                let v = (1.0 - fy) * ((1.0 - fx) * at(y0, x0) + fx * at(y0, x1))
                    + fy * ((1.0 - fx) * at(y1, x0) + fx * at(y1, x1));
                let dst = if flip { w - 1 - ox } else { ox };
                out[oy * w + dst] = v as f32;
            }
        }
    }
}

impl BatchSource for RandomResizedCropFlip<'_> {
    fn len(&self) -> usize {
        self.split.len()
    }

    fn batch(&self, indices: &[usize], device: &Device) -> candle_core::Result<MultimodalBatch> {
        let mut batch = self.split.batch(indices, &Device::Cpu)?;
        let frames = &batch.inputs[self.modality];
        let dims = frames.dims().to_vec();
        let (h, w) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        let per_sample: usize = dims[1..].iter().product();
        let values = frames.flatten_all()?.to_vec1::<f32>()?;
        let mut out = vec![0f32; values.len()];
        // One stream per batch, keyed by the seed and the samples in it.
        let key = indices.iter().fold(self.seed ^ 0x9e37_79b9_7f4a_7c15, |k, &i| {
            k.rotate_left(7) ^ (i as u64).wrapping_mul(0x0100_0000_01b3)
        });
        let mut rng = ChaCha8Rng::seed_from_u64(key);
        for b in 0..dims[0] {
            // One crop and one flip per sample, shared by its channels and frames.
            let bx = self.crop_box(&mut rng, h, w);
            let flip = rng.random::<f64>() < 0.5;
            let sample = b * per_sample;
            for p in (0..per_sample).step_by(h * w) {
                let at = sample + p;
                Self::resample(&values[at..at + h * w], h, w, bx, flip, &mut out[at..at + h * w]);
            }
        }
        batch.inputs[self.modality] = Tensor::from_vec(out, dims, &Device::Cpu)?;
        batch.to_device(device)
    }

    fn pads_per_batch(&self) -> bool {
        self.split.pads_per_batch()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split() -> SplitTensors {
        let frames: Vec<f32> = (0..2 * 3 * 8 * 8).map(|i| (i % 17) as f32).collect();
        SplitTensors::new(vec![frames], vec![vec![3, 1, 8, 8]], vec![0, 1])
    }

    #[test]
    fn crops_stay_in_the_image_and_keep_shape() {
        let s = split();
        let aug = RandomResizedCropFlip::new(&s, 0, 3);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..200 {
            let (t, l, h, w) = aug.crop_box(&mut rng, 8, 8);
            assert!(h > 0 && w > 0 && t + h <= 8 && l + w <= 8);
        }
        let b = aug.batch(&[1, 0], &Device::Cpu).unwrap();
        assert_eq!(b.inputs[0].dims(), &[2, 3, 1, 8, 8]);
        // Same indices, same seed: the same batch (resumable); another order: another draw.
        let again = aug.batch(&[1, 0], &Device::Cpu).unwrap();
        assert_eq!(
            b.inputs[0].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            again.inputs[0].flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }

    #[test]
    fn the_whole_image_unflipped_is_the_identity() {
        let plane: Vec<f32> = (0..20).map(|i| i as f32).collect();
        let mut out = vec![0.0; 20];
        RandomResizedCropFlip::resample(&plane, 4, 5, (0, 0, 4, 5), false, &mut out);
        assert_eq!(out, plane);
        RandomResizedCropFlip::resample(&plane, 4, 5, (0, 0, 4, 5), true, &mut out);
        assert_eq!(&out[..5], &[4.0, 3.0, 2.0, 1.0, 0.0]);
    }
}
