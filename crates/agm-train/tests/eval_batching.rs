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

#[test]
fn evaluation_reports_the_summed_heads_of_models_that_have_them() {
    use agm_core::{ForwardOpts, MultimodalModel};
    let dev = Device::Cpu;
    let data = split(7);
    // The reference's `_Sum` models: each modality's head, as MSLR and MSES read them.
    let model = common::tiny_model(2, &FusionKind::LateSum, false, 2, DType::F32);
    let report = agm_train::evaluate(&model, &data, 3, &dev).unwrap();
    let batch = data.batch(&(0..7).collect::<Vec<_>>(), &dev).unwrap();
    let pass = model.forward(&batch.inputs, &ForwardOpts::eval(2)).unwrap();
    let heads = model.modality_logits(&pass).unwrap().unwrap();
    let labels = batch.labels.to_vec1::<u32>().unwrap();
    for (x, head) in heads.iter().enumerate() {
        let predicted = head.argmax(1).unwrap().to_vec1::<u32>().unwrap();
        let correct = predicted.iter().zip(&labels).filter(|(p, l)| p == l).count();
        assert_eq!(report.head_accuracy[x], correct as f64 / 7.0);
        let loss = candle_nn::loss::cross_entropy(head, &batch.labels).unwrap().to_scalar::<f32>().unwrap();
        assert!((report.head_loss[x] - loss as f64).abs() < 1e-6, "{} vs {loss}", report.head_loss[x]);
    }
    // They differ from the Shapley outputs' (shifted by the heads' response to zeros).
    assert_ne!(report.head_loss, report.modality_loss);
    // A concat model has no heads of its own; reports round-trip either way.
    let concat = common::tiny_model(2, &FusionKind::LateConcat, false, 2, DType::F32);
    let plain = agm_train::evaluate(&concat, &data, 3, &dev).unwrap();
    assert!(plain.head_accuracy.is_empty() && plain.head_loss.is_empty());
    for r in [&report, &plain] {
        let json = serde_json::to_string(r).unwrap();
        assert_eq!(json.contains("head_accuracy"), !r.head_accuracy.is_empty(), "{json}");
        assert_eq!(&serde_json::from_str::<agm_metric::EvalReport>(&json).unwrap(), r);
    }
}
