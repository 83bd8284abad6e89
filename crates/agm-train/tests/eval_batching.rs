//! Evaluation batches data that pads per batch (UR-Funny) as the reference's loaders do: in
//! order, at the run's training batch size, since the padding depends on the batch. Other data
//! is evaluated at the evaluation batch size.

use std::cell::RefCell;
use std::path::Path;

use agm_core::{BatchSource, MultimodalBatch};
use agm_data::SplitTensors;
use agm_fusion::FusionKind;
use agm_modulation::Joint;
use agm_train::{config, NoCallback, RunConfig, Trainer, TrainerOptions};
use candle_core::{DType, Device};

mod common;

/// `n` samples of two `[2, 3]` modalities, labels alternating.
fn split(n: usize) -> SplitTensors {
    let values = |offset: usize| (0..n * 6).map(|i| ((i * 7 + offset) % 11) as f32 / 11.0 - 0.5).collect();
    SplitTensors::new(vec![values(0), values(3)], vec![vec![2, 3], vec![2, 3]], (0..n as u32).map(|i| i % 2).collect())
}

/// A split that records the sample indices of every batch it is asked for.
struct Recorder {
    split: SplitTensors,
    pads_per_batch: bool,
    asked: RefCell<Vec<Vec<usize>>>,
}

impl BatchSource for Recorder {
    fn len(&self) -> usize {
        self.split.len()
    }

    fn batch(&self, indices: &[usize], device: &Device) -> candle_core::Result<MultimodalBatch> {
        self.asked.borrow_mut().push(indices.to_vec());
        self.split.batch(indices, device)
    }

    fn pads_per_batch(&self) -> bool {
        self.pads_per_batch
    }
}

fn options() -> TrainerOptions {
    TrainerOptions {
        epochs: 1,
        batch_size: 3,
        eval_batch_size: 256,
        checkpoint_every_steps: 0,
        ..RunConfig::av_digits().trainer_options()
    }
}

#[test]
fn data_padded_per_batch_is_evaluated_in_order_at_the_training_batch_size() {
    let train = split(5);
    for (pads_per_batch, expected) in
        [(true, vec![vec![0, 1, 2], vec![3, 4, 5], vec![6]]), (false, vec![(0..7).collect::<Vec<usize>>()])]
    {
        let validation = Recorder { split: split(7), pads_per_batch, asked: RefCell::default() };
        assert_eq!(options().eval_batch_size_for(&validation), if pads_per_batch { 3 } else { 256 });
        let model = common::tiny_model(2, &FusionKind::LateConcat, false, 2, DType::F32);
        let mut trainer = Trainer::new(
            &model,
            Box::new(Joint::new()),
            |g| Ok(RunConfig::av_digits().optimizer.build(g)?),
            options(),
            &Device::Cpu,
        )
        .unwrap();
        // The end-of-epoch validation pass.
        trainer.fit(&train, &validation, &mut NoCallback).unwrap();
        assert_eq!(validation.asked.take(), expected, "pads per batch: {pads_per_batch}");
        // The final evaluation (the test split of a run).
        trainer.evaluate(&validation, &mut |_, _| {}).unwrap();
        assert_eq!(validation.asked.take(), expected, "pads per batch: {pads_per_batch}");
    }
}

#[test]
fn urfunny_splits_are_evaluated_at_the_run_s_batch_size_and_mosei_s_at_the_evaluation_one() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agm-data/tests/fixtures");
    for (dataset, data, evaluated_at) in [("urfunny", "urfunny/humor_p4.pkl", 3), ("mosei", "mosei", 256)] {
        let cfg = RunConfig {
            dataset: dataset.into(),
            data: fixtures.join(data).to_string_lossy().into_owned(),
            model: config::default_model(dataset),
            batch_size: 3,
            ..RunConfig::av_digits()
        };
        let loaded = cfg.load_dataset().unwrap();
        let opts = cfg.trainer_options();
        for split in [&loaded.train, &loaded.validation, &loaded.test] {
            assert_eq!(opts.eval_batch_size_for(split), evaluated_at, "{dataset}");
        }
    }
}
