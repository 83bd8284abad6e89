//! Shared setup for the criterion benches and `cargo xtask bench`: one training step of the
//! default AV-Digits model under a given method, on a fixed batch.

use agm_core::{MultimodalBatch, MultimodalModel, NamedVar};
use agm_modulation::{Agm, AgmConfig, Joint, Modulator};
use agm_train::optim::{Optimizer, OptimizerConfig, ParamGroup, SgdConfig};
use agm_train::step::NoObserver;
use agm_train::{train_step, RunConfig, StepParts};
use candle_core::{Device, Result};

/// A model, its method and optimizer, ready to step.
pub struct StepBench {
    pub method: &'static str,
    model: Box<dyn MultimodalModel>,
    modulator: Box<dyn Modulator>,
    optimizer: Box<dyn Optimizer + Send>,
    trainable: Vec<NamedVar>,
    step: usize,
}

impl StepBench {
    /// `method` is `joint` or `agm`.
    pub fn new(method: &'static str, device: &Device) -> Result<Self> {
        let model = RunConfig::av_digits().build_model(device).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let modulator: Box<dyn Modulator> = match method {
            "agm" => Box::new(Agm::new(AgmConfig::av_digits(), 2).map_err(candle_core::Error::Msg)?),
            _ => Box::new(Joint::new()),
        };
        let trainable = model.param_groups().trainable();
        let optimizer =
            OptimizerConfig::Sgd(SgdConfig::agm_reference(0.01)).build(vec![ParamGroup::new(trainable.clone())])?;
        Ok(Self { method, model, modulator, optimizer, trainable, step: 0 })
    }

    /// One full training step on `batch`.
    pub fn step(&mut self, batch: &MultimodalBatch) -> Result<f64> {
        self.step += 1;
        let mut parts = StepParts {
            model: self.model.as_ref(),
            modulator: self.modulator.as_mut(),
            optimizer: self.optimizer.as_mut(),
            trainable: &self.trainable,
            shapley: agm_core::ShapleyMode::Faithful,
        };
        Ok(train_step(&mut parts, batch, self.step, 1, self.step as u64, &mut NoObserver)?.loss)
    }
}

/// The first `batch_size` training samples of AV-Digits.
pub fn av_digits_batch(batch_size: usize, device: &Device) -> Result<MultimodalBatch> {
    let data = RunConfig::av_digits().load_av_digits().map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let train = data.split(agm_data::av_digits::Split::Train);
    let indices: Vec<usize> = (0..batch_size.min(train.len())).collect();
    train.batch(&indices, device)
}

/// Median seconds per step of each bench, timed interleaved so machine load hits all alike.
pub fn interleaved_medians(benches: &mut [StepBench], batch: &MultimodalBatch, steps: usize) -> Result<Vec<f64>> {
    let mut times = vec![Vec::with_capacity(steps); benches.len()];
    for i in 0..steps + 3 {
        for (b, t) in benches.iter_mut().zip(times.iter_mut()) {
            let started = std::time::Instant::now();
            b.step(batch)?;
            if i >= 3 {
                t.push(started.elapsed().as_secs_f64());
            }
        }
    }
    Ok(times
        .into_iter()
        .map(|mut t| {
            t.sort_by(|a, b| a.total_cmp(b));
            t[t.len() / 2]
        })
        .collect())
}
