//! Evaluation: fused accuracy and per-modality Shapley accuracy (and the model's own heads'
//! accuracy where its fusion sums them), all passes in evaluation mode.

use agm_core::{BatchSource, ForwardOpts, MultimodalModel, Subset};
use agm_metric::{EvalReport, EvalTally};
use agm_modulation::{shapley, Modulator};
use candle_core::{DType, Device, Result};

/// Evaluates `model` on every sample of `data` in order. With two or more modalities it also
/// runs every masked pass and reports each modality's Shapley mono-modal accuracy and loss.
/// Where `data` pads per batch ([`BatchSource::pads_per_batch`]) the outputs depend on
/// `batch_size`; [`crate::TrainerOptions::eval_batch_size_for`] gives the reference's.
pub fn evaluate(
    model: &dyn MultimodalModel,
    data: &dyn BatchSource,
    batch_size: usize,
    device: &Device,
) -> Result<EvalReport> {
    evaluate_observed(model, data, batch_size, device, &mut |_, _| {})
}

/// [`evaluate`], calling `progress(samples_done, samples_total)` after each batch (drivers show
/// a progress bar; libraries never print).
pub fn evaluate_observed(
    model: &dyn MultimodalModel,
    data: &dyn BatchSource,
    batch_size: usize,
    device: &Device,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<EvalReport> {
    evaluate_with(model, None, data, batch_size, device, progress)
}

/// [`evaluate_observed`] with a method's own prediction for every pass
/// ([`Modulator::predict`]; the model's logits where it has none).
pub fn evaluate_with(
    model: &dyn MultimodalModel,
    method: Option<&dyn Modulator>,
    data: &dyn BatchSource,
    batch_size: usize,
    device: &Device,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<EvalReport> {
    let prediction = |pass: agm_core::ModelOutput| -> Result<candle_core::Tensor> {
        let predicted = match method {
            Some(method) => method.predict(model, &pass)?,
            None => None,
        };
        Ok(predicted.unwrap_or(pass.logits).detach())
    };
    let logits = |opts: &ForwardOpts, inputs: &[candle_core::Tensor]| prediction(model.forward(inputs, opts)?);
    let m = model.modalities().len();
    let mut tally = EvalTally::new(model.modalities().names());
    let n = data.len();
    let indices: Vec<usize> = (0..n).collect();
    for chunk in indices.chunks(batch_size.max(1)) {
        let batch = data.batch(chunk, device)?;
        let labels = batch.labels.to_dtype(DType::U32)?.to_vec1::<u32>()?;
        let opts = ForwardOpts::eval(m);
        let pass = model.forward(&batch.inputs, &opts)?;
        // The model's own uni-modal heads, where its fusion sums them (the baselines read them).
        if let Some(heads) = model.modality_logits(&pass)? {
            tally.add_heads(&heads.iter().map(|h| h.detach()).collect::<Vec<_>>(), &labels)?;
        }
        let full = prediction(pass)?;
        let mono = if m == 1 {
            vec![full.clone()]
        } else {
            let mut passes = Vec::new();
            for s in shapley::masked_subsets(m) {
                passes.push((s, logits(&opts.with_present(s), &batch.inputs)?));
            }
            let lookup = |s: Subset| {
                if s == Subset::full(m) {
                    Some(&full)
                } else {
                    passes.iter().find(|(p, _)| *p == s).map(|(_, t)| t)
                }
            };
            shapley::mono_outputs(m, lookup)?
        };
        tally.add(&full, &mono, &labels)?;
        progress(chunk.last().map_or(0, |&i| i + 1), n);
    }
    Ok(tally.report())
}
