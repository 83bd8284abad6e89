//! Helpers the methods with their own heads or draws share (G-Blending, MMPareto, PMR): seeds,
//! batched passes over a source, labels and scalars, the two-modality check.

use agm_core::{BatchSource, ForwardOpts, MultimodalBatch, MultimodalModel};
use candle_core::{DType, Device, Result, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::MethodError;

/// Whether `epoch` (1-based) lies in the inclusive window `start..=end` (`end` `None`: no end).
pub(crate) fn in_window(start: usize, end: Option<usize>, epoch: usize) -> bool {
    epoch >= start && end.is_none_or(|end| epoch <= end)
}

/// `<section>.window_end` must not come before `<section>.window_start`, nor before epoch 1.
pub(crate) fn check_window(section: &str, start: usize, end: Option<usize>) -> std::result::Result<(), MethodError> {
    match end {
        Some(0) => Err(format!(
            "{section}.window_end must be >= 1: epochs count from 1, so a window ending at 0 holds none (leave it \
             out for no end)"
        )
        .into()),
        Some(end) if end < start => {
            Err(format!("{section}.window_end ({end}) must be >= {section}.window_start ({start})").into())
        }
        _ => Ok(()),
    }
}

/// Which built-in datasets give a run a held-out split, for the errors of methods that need one.
const BUILT_IN_HOLDOUTS: &str = "of the built-in datasets, av-digits, avmnist and cremad have one (their \
     `dep` split); urfunny's `dep` is its test split, which no training decision may read, and ave, mosei and \
     synthetic have none";

/// Refuses, at build time, a method that reads a held-out split (`needs`: what it reads it for)
/// when the run has none.
pub(crate) fn require_holdout(
    cx: &crate::BuildCx<'_>,
    method: &str,
    needs: &str,
) -> std::result::Result<(), MethodError> {
    if cx.holdout == Some(false) {
        return Err(format!("method = `{method}` {needs}, and this run has none; {BUILT_IN_HOLDOUTS}").into());
    }
    Ok(())
}

/// The error of a method that reads a held-out split (`needs`: what for) in a run without one.
pub(crate) fn no_holdout(method: &str, needs: &str) -> candle_core::Error {
    candle_core::Error::Msg(format!(
        "{method} {needs}, and the run has none: give the trainer one (Trainer::with_holdout, disjoint from the \
         training data); {BUILT_IN_HOLDOUTS}"
    ))
}

/// Mixes two seeds (splitmix64 finaliser).
pub(crate) fn mix_seed(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.rotate_left(29) ^ 0x9E37_79B9_7F4A_7C15;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The dtype and device of the model's variables (the method's heads and tensors follow them).
pub(crate) fn model_dtype_device(model: &dyn MultimodalModel) -> Result<(DType, Device)> {
    let groups = model.param_groups();
    let v = groups
        .trainable()
        .into_iter()
        .next()
        .ok_or_else(|| candle_core::Error::Msg("the model has no trainable variables".into()))?;
    Ok((v.var.dtype(), v.var.device().clone()))
}

/// The labels of a batch as `u32`.
pub(crate) fn labels_u32(batch: &MultimodalBatch) -> Result<Vec<u32>> {
    batch.labels.to_dtype(DType::U32)?.to_vec1::<u32>()
}

/// A method's saved state read back as `T`: `None` for a run that saved none yet (`null`), an
/// error naming the method for anything else that is not a `T`.
pub(crate) fn saved_state<T: serde::de::DeserializeOwned>(
    method: &str,
    state: &serde_json::Value,
) -> Result<Option<T>> {
    if state.is_null() {
        return Ok(None);
    }
    serde_json::from_value(state.clone())
        .map(Some)
        .map_err(|e| candle_core::Error::Msg(format!("{method} state in the checkpoint: {e}")))
}

/// A scalar tensor as f64.
pub(crate) fn scalar_f64(t: &Tensor) -> Result<f64> {
    t.to_dtype(DType::F64)?.to_scalar::<f64>()
}

/// Runs `f` on consecutive batches of `indices` from `source`.
pub(crate) fn for_each_batch(
    source: &dyn BatchSource,
    indices: &[usize],
    batch_size: usize,
    device: &Device,
    mut f: impl FnMut(&MultimodalBatch) -> Result<bool>,
) -> Result<()> {
    for chunk in indices.chunks(batch_size.max(1)) {
        let batch = source.batch(chunk, device)?;
        if !f(&batch)? {
            break;
        }
    }
    Ok(())
}

/// `0..n` shuffled by a ChaCha8 generator seeded with `seed`.
pub(crate) fn seeded_permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    idx.shuffle(&mut rng);
    idx
}

/// Checks that a method that compares modalities gets at least two.
pub(crate) fn require_two(method: &str, m: usize) -> std::result::Result<(), MethodError> {
    if m < 2 {
        return Err(format!(
            "method = `{method}` needs a model with at least 2 modalities, the model has {m}; \
             with one modality use method = joint"
        )
        .into());
    }
    Ok(())
}

/// Measures the flattened size of every encoder feature from one batch (evaluation mode), for
/// [`crate::GBlend::with_feature_dims`] and [`crate::MmPareto::with_feature_dims`].
pub fn encoder_feature_dims(model: &dyn MultimodalModel, batch: &MultimodalBatch) -> Result<Vec<usize>> {
    let m = model.modalities().len();
    let out = model.forward(&batch.inputs, &ForwardOpts::eval(m))?;
    out.encoder_features
        .iter()
        .map(|f| {
            let b = f.dim(0)?;
            if b == 0 {
                candle_core::bail!("cannot measure encoder feature sizes from an empty batch");
            }
            Ok(f.elem_count() / b)
        })
        .collect()
}
