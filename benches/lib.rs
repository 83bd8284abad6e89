//! Shared setup for the criterion benches and `cargo xtask bench`: one training step of a model
//! preset under a given method, on a fixed batch; the kernels against plain candle; the
//! AV-MNIST loader against the training step.

use agm_core::{FastShapley, MultimodalBatch, MultimodalModel, NamedVar, ShapleyMode};
use agm_fusion::PresetOptions;
use agm_modulation::{Agm, AgmConfig, Joint, Modulator};
use agm_train::optim::{Optimizer, OptimizerConfig, ParamGroup, SgdConfig};
use agm_train::step::NoObserver;
use agm_train::{train_step, RunConfig, StepParts};
use candle_core::{DType, Device, Result};

/// A model, its method and optimizer, ready to step.
pub struct StepBench {
    /// `joint`, `agm` (faithful Shapley passes) or `agm-fast`.
    pub method: &'static str,
    model: Box<dyn MultimodalModel>,
    modulator: Box<dyn Modulator>,
    optimizer: Box<dyn Optimizer + Send>,
    trainable: Vec<NamedVar>,
    shapley: ShapleyMode,
    step: usize,
}

impl StepBench {
    /// The default AV-Digits model; `method` is `joint`, `agm` or `agm-fast`.
    pub fn new(method: &'static str, device: &Device) -> Result<Self> {
        Self::for_preset("av-digits-late", &PresetOptions::default(), method, device)
    }

    /// Model preset `preset` (seed 0) under `method`: `joint`, `agm` or `agm-fast`.
    pub fn for_preset(preset: &str, opts: &PresetOptions, method: &'static str, device: &Device) -> Result<Self> {
        let model = agm_fusion::build_preset(preset, opts, 0, DType::F32, device)?;
        let m = model.modalities().len();
        let modulator: Box<dyn Modulator> = match method {
            "agm" | "agm-fast" => Box::new(Agm::new(AgmConfig::av_digits(), m).map_err(candle_core::Error::wrap)?),
            _ => Box::new(Joint::new()),
        };
        let shapley = if method == "agm-fast" { ShapleyMode::Fast } else { ShapleyMode::Faithful };
        let trainable = model.param_groups().trainable();
        let optimizer =
            OptimizerConfig::Sgd(SgdConfig::agm_reference(0.01)).build(vec![ParamGroup::new(trainable.clone())])?;
        Ok(Self { method, model, modulator, optimizer, trainable, shapley, step: 0 })
    }

    /// Whether this arm's step is its own: `agm-fast` on a model without fast Shapley passes
    /// (`FastShapley::NotSupported`: `mosei-mat`, `ave-psp`) runs the faithful ones, `agm`'s step.
    pub fn is_distinct_arm(&self) -> bool {
        self.method != "agm-fast" || self.model.fast_shapley() != FastShapley::NotSupported
    }

    /// One full training step on `batch`.
    pub fn step(&mut self, batch: &MultimodalBatch) -> Result<f64> {
        self.step += 1;
        let mut parts = StepParts {
            model: self.model.as_ref(),
            modulator: self.modulator.as_mut(),
            optimizer: self.optimizer.as_mut(),
            trainable: &self.trainable,
            shapley: self.shapley,
            loss_reduction: Default::default(),
        };
        let loss = train_step(&mut parts, batch, self.step, 1, self.step as u64, &mut NoObserver)?.loss;
        // Wait for the device so wall time covers the work (a no-op on the CPU).
        self.trainable[0].var.device().synchronize()?;
        Ok(loss)
    }
}

/// The input shapes the step benches time: the reference's sizes, sequences of `sequence_len`
/// steps.
pub fn reference_shapes(sequence_len: usize) -> PresetOptions {
    PresetOptions { scale: agm_fusion::InputScale::Reference, sequence_len, ..PresetOptions::default() }
}

/// A batch of seeded synthetic samples with the input shapes of preset `preset`.
pub fn preset_batch(preset: &str, opts: &PresetOptions, batch_size: usize, device: &Device) -> Result<MultimodalBatch> {
    let spec = agm_fusion::preset_spec(preset, opts)?;
    let data = RunConfig::synthetic_dataset(&spec, [batch_size, 0, 0], 0);
    data.train.batch(&(0..batch_size).collect::<Vec<_>>(), device)
}

/// The first `batch_size` training samples of AV-Digits.
pub fn av_digits_batch(batch_size: usize, device: &Device) -> Result<MultimodalBatch> {
    let data = RunConfig::av_digits().load_av_digits().map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let train = data.split(agm_data::av_digits::Split::Train);
    let indices: Vec<usize> = (0..batch_size.min(train.len())).collect();
    train.batch(&indices, device)
}

/// Something timed in blocks of consecutive steps: one of agm's arms on its batch, or an outside
/// process (PyTorch's plain step in `cargo xtask bench`).
pub trait TimedArm {
    /// The seconds of each of `n` consecutive steps.
    fn time_block(&mut self, n: usize) -> Result<Vec<f64>>;

    /// How long the machine is left alone after this arm's block, before the next arm's: an
    /// outside process's threads may go on spinning at barriers after its step returns, which
    /// would be timed as the next arm's. None by default.
    fn settle(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

/// A [`StepBench`] stepping on one batch.
pub struct OnBatch<'a>(pub &'a mut StepBench, pub &'a MultimodalBatch);

impl TimedArm for OnBatch<'_> {
    fn time_block(&mut self, n: usize) -> Result<Vec<f64>> {
        (0..n)
            .map(|_| {
                let started = std::time::Instant::now();
                self.0.step(self.1)?;
                Ok(started.elapsed().as_secs_f64())
            })
            .collect()
    }
}

/// Median seconds per step of each bench on `batch` ([`interleaved_arm_medians`]).
pub fn interleaved_medians(benches: &mut [StepBench], batch: &MultimodalBatch, steps: usize) -> Result<Vec<f64>> {
    let mut arms: Vec<OnBatch<'_>> = benches.iter_mut().map(|b| OnBatch(b, batch)).collect();
    let mut arms: Vec<&mut dyn TimedArm> = arms.iter_mut().map(|a| a as &mut dyn TimedArm).collect();
    interleaved_arm_medians(&mut arms, steps)
}

/// Median seconds per step of each arm. The arms take turns in blocks of a few consecutive
/// steps, so machine load hits all alike while each step still follows one of its own model (as
/// in training, where one model steps after another); the turn order changes every round
/// ([`turn_order`]) so no arm always follows the same one, and the first round is warm-up.
pub fn interleaved_arm_medians(arms: &mut [&mut dyn TimedArm], steps: usize) -> Result<Vec<f64>> {
    const BLOCK: usize = 3;
    if steps == 0 {
        candle_core::bail!("a median needs at least one timed step (steps = 0)")
    }
    let n = arms.len();
    let mut times = vec![Vec::with_capacity(steps); n];
    for round in 0..=steps.div_ceil(BLOCK) {
        for i in turn_order(n, round) {
            let block = arms[i].time_block(BLOCK)?;
            std::thread::sleep(arms[i].settle());
            if round > 0 {
                let room = steps - times[i].len();
                times[i].extend(block.into_iter().take(room));
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

/// The order of `n` arms' turns in round `round`: the rows of a Williams design, a Latin square
/// in which, over `n` rounds (`2n` for odd `n`), each arm follows every other arm equally often.
/// What an arm leaves behind (threads still spinning, caches) so falls on every other arm alike;
/// a plain rotation (`round + k`) would put the same arm after it in almost every round.
pub fn turn_order(n: usize, round: usize) -> Vec<usize> {
    // 0, 1, n − 1, 2, n − 2, …
    let base = (0..n).map(|k| if k % 2 == 1 { k.div_ceil(2) } else { (n - k / 2) % n });
    let row = round % if n.is_multiple_of(2) { n } else { 2 * n };
    let mut order: Vec<usize> = base.map(|b| (b + row) % n).collect();
    if row >= n {
        order.reverse();
    }
    order
}

pub use agm_train::memory::{device_peak_memory_bytes, peak_memory_bytes, reset_device_peak_memory, reset_peak_memory};

pub mod kernels;
pub mod launches;
pub mod loader;

#[cfg(test)]
mod tests {
    use super::*;

    /// An arm whose k-th step takes `k + offset` seconds, counting every step it runs.
    struct Counting {
        offset: f64,
        ran: usize,
    }

    impl TimedArm for Counting {
        fn time_block(&mut self, n: usize) -> Result<Vec<f64>> {
            let times = (self.ran..self.ran + n).map(|k| k as f64 + self.offset).collect();
            self.ran += n;
            Ok(times)
        }
    }

    #[test]
    fn every_arm_follows_every_other_equally_often() {
        for n in 1..=6 {
            let rounds = if n % 2 == 0 { n } else { 2 * n };
            let mut follows = vec![vec![0; n]; n];
            for round in 0..rounds {
                let order = turn_order(n, round);
                let mut sorted = order.clone();
                sorted.sort_unstable();
                assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "round {round} of {n} arms: {order:?}");
                for pair in order.windows(2) {
                    follows[pair[0]][pair[1]] += 1;
                }
            }
            let counts: Vec<usize> = (0..n)
                .flat_map(|a| (0..n).filter(move |&b| b != a).map(move |b| (a, b)))
                .map(|(a, b)| follows[a][b])
                .collect();
            assert!(counts.iter().all(|&c| c == counts[0]), "{n} arms: {follows:?}");
        }
    }

    #[test]
    fn arms_take_turns_after_a_warm_up_round_and_report_their_medians() {
        let (mut a, mut b) = (Counting { offset: 0.0, ran: 0 }, Counting { offset: 100.0, ran: 0 });
        let medians = interleaved_arm_medians(&mut [&mut a, &mut b], 5).unwrap();
        // A warm-up block of 3, then two blocks (6 steps) of which the first 5 count: steps 3..8.
        assert_eq!((a.ran, b.ran), (9, 9));
        assert_eq!(medians, vec![5.0, 105.0]);
        // No timed step has no median: an error, not a panic.
        let err = interleaved_arm_medians(&mut [&mut a, &mut b], 0).unwrap_err().to_string();
        assert!(err.contains("steps = 0"), "{err}");
    }
}
