//! The training loop on AV-Digits: resume, bad input, NaN loss, and the competition the default
//! preset is built to show.

use agm_core::MultimodalModel;
use agm_data::av_digits::{self, AvDigitsConfig, Split};
use agm_fusion::{FusionModel, LateConcatConfig};
use agm_modulation::{Agm, AgmConfig, Joint, Modulator};
use agm_train::{RunConfig, RunDir, TrainError, Trainer, TrainerOptions};
use candle_core::{DType, Device};

mod common;

fn options(epochs: usize) -> TrainerOptions {
    let cfg = RunConfig::av_digits();
    TrainerOptions { epochs, checkpoint_every_steps: 0, ..cfg.trainer_options() }
}

fn weights(model: &FusionModel) -> Vec<(String, Vec<f32>)> {
    model
        .param_groups()
        .all_sorted()
        .into_iter()
        .map(|v| (v.name, v.var.as_tensor().flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1().unwrap()))
        .collect()
}

fn agm() -> Box<dyn Modulator> {
    Box::new(Agm::new(AgmConfig::av_digits(), 2).unwrap())
}

fn sgd() -> impl FnOnce(Vec<agm_train::optim::ParamGroup>) -> candle_core::Result<Box<dyn agm_train::optim::Optimizer>>
{
    |g| Ok(RunConfig::av_digits().optimizer.build(g)?)
}

#[test]
fn resume_mid_epoch_gives_the_same_weights_as_an_uninterrupted_run() {
    let data = av_digits::load(&AvDigitsConfig::default_preset()).unwrap();
    let (train, val) = (data.split(Split::Train), data.split(Split::Validation));
    let dev = Device::Cpu;
    let cfg = LateConcatConfig::av_digits();

    let whole_dir = tempfile::tempdir().unwrap();
    let whole = FusionModel::late_concat(&cfg, 3, DType::F32, &dev).unwrap();
    let mut t = Trainer::new(&whole, agm(), sgd(), options(2), &dev)
        .unwrap()
        .with_run_dir(RunDir::create(whole_dir.path()).unwrap());
    let full = t.fit(train, val, &mut agm_train::NoCallback).unwrap();

    // Stop in the middle of epoch 2 (29 steps per epoch), then resume from a fresh process state.
    let dir = tempfile::tempdir().unwrap();
    let first = FusionModel::late_concat(&cfg, 3, DType::F32, &dev).unwrap();
    let mut t =
        Trainer::new(&first, agm(), sgd(), options(2), &dev).unwrap().with_run_dir(RunDir::create(dir.path()).unwrap());
    let stopped = t.fit(train, val, &mut common::StopAt(40)).unwrap();
    assert!(stopped.stopped_early);
    assert_eq!(stopped.global_step, 40);

    let second = FusionModel::late_concat(&cfg, 99, DType::F32, &dev).unwrap(); // other init: all must come from the checkpoint
    let mut t =
        Trainer::new(&second, agm(), sgd(), options(2), &dev).unwrap().with_run_dir(RunDir::open(dir.path()).unwrap());
    t.resume().unwrap();
    let resumed = t.fit(train, val, &mut agm_train::NoCallback).unwrap();

    assert_eq!(resumed.global_step, full.global_step);
    assert_eq!(weights(&second), weights(&whole), "resumed weights differ from the uninterrupted run");
    assert_eq!(resumed.last.as_ref().unwrap().last_coefficients, full.last.as_ref().unwrap().last_coefficients);
    let rows: Vec<agm_train::EpochSummary> = RunDir::open(dir.path()).unwrap().read_metrics().unwrap();
    assert_eq!(rows.iter().map(|r| r.epoch).collect::<Vec<_>>(), vec![1, 2], "one metrics row per epoch after resume");
}

#[test]
fn nan_loss_stops_with_a_message_and_keeps_the_last_checkpoint() {
    let data = av_digits::load(&AvDigitsConfig::default_preset()).unwrap();
    let dev = Device::Cpu;
    let dir = tempfile::tempdir().unwrap();
    let model = FusionModel::late_concat(&LateConcatConfig::av_digits(), 0, DType::F32, &dev).unwrap();
    let opts = TrainerOptions { checkpoint_every_steps: 2, ..options(1) };
    let mut t =
        Trainer::new(&model, agm(), sgd(), opts, &dev).unwrap().with_run_dir(RunDir::create(dir.path()).unwrap());
    let bias = model.param_groups().find("head.fc.bias").unwrap().var.clone();
    // The head bias turns NaN after step 3, as a diverged run would (after step 4 the
    // checkpoint written there would be refused first, see crash_resume.rs).
    let err =
        t.fit(data.split(Split::Train), data.split(Split::Validation), &mut common::PoisonAfter(bias, 3)).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, TrainError::NonFiniteLoss { step: 4, .. }), "{msg}");
    assert!(msg.contains("NaN") && msg.contains("checkpoint.safetensors") && msg.contains("--resume"), "{msg}");
    // The checkpoint of step 2 is intact and loads.
    let ck = agm_train::Checkpoint::load(&dir.path().join("checkpoint.safetensors"), &dev).unwrap();
    assert!(!ck.model.is_empty());
}

#[test]
fn a_failed_competition_measurement_names_the_epoch_and_what_was_kept() {
    struct Failing;
    impl agm_train::CompetitionProbe for Failing {
        fn strength(&mut self, _: &dyn MultimodalModel, _: &Device) -> candle_core::Result<Vec<f64>> {
            candle_core::bail!("ridge: the features or the targets hold NaN or infinite values")
        }
    }
    let data = av_digits::load(&AvDigitsConfig::default_preset()).unwrap();
    let dev = Device::Cpu;
    let dir = tempfile::tempdir().unwrap();
    let model = FusionModel::late_concat(&LateConcatConfig::av_digits(), 0, DType::F32, &dev).unwrap();
    let mut t = Trainer::new(&model, agm(), sgd(), options(1), &dev)
        .unwrap()
        .with_run_dir(RunDir::create(dir.path()).unwrap())
        .with_competition(Box::new(Failing));
    let err = t.fit(data.split(Split::Train), data.split(Split::Validation), &mut agm_train::NoCallback).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, TrainError::Competition { epoch: 1, .. }), "{msg}");
    assert!(msg.contains("at the end of epoch 1") && msg.contains("NaN"), "{msg}");
    // Measured before the epoch's checkpoint: the run has none to resume from.
    assert!(msg.contains("no checkpoint was written yet") && msg.contains("nothing to resume"), "{msg}");
    assert!(!msg.contains("stack backtrace") && msg.lines().count() == 1, "{msg}");
}

#[test]
fn another_methods_checkpoint_is_refused_by_name() {
    let data = av_digits::load(&AvDigitsConfig::default_preset()).unwrap();
    let dev = Device::Cpu;
    let dir = tempfile::tempdir().unwrap();
    let model = FusionModel::late_concat(&LateConcatConfig::av_digits(), 0, DType::F32, &dev).unwrap();
    let mut t = Trainer::new(&model, Box::new(Joint::new()), sgd(), options(1), &dev)
        .unwrap()
        .with_run_dir(RunDir::create(dir.path()).unwrap());
    t.fit(data.split(Split::Train), data.split(Split::Validation), &mut common::StopAt(3)).unwrap();
    let mut t =
        Trainer::new(&model, agm(), sgd(), options(1), &dev).unwrap().with_run_dir(RunDir::open(dir.path()).unwrap());
    let err = t.resume().unwrap_err().to_string();
    assert!(err.contains("checkpoint.safetensors") && err.contains("written by a `joint` run"), "{err}");
}

#[test]
fn missing_and_corrupt_checkpoints_name_the_file() {
    let dev = Device::Cpu;
    let dir = tempfile::tempdir().unwrap();
    let model = FusionModel::late_concat(&LateConcatConfig::av_digits(), 0, DType::F32, &dev).unwrap();
    let mut t =
        Trainer::new(&model, agm(), sgd(), options(1), &dev).unwrap().with_run_dir(RunDir::create(dir.path()).unwrap());
    let err = t.resume().unwrap_err().to_string();
    assert!(err.contains("checkpoint.safetensors") && err.contains("not found"), "{err}");

    std::fs::write(dir.path().join("checkpoint.safetensors"), b"not a checkpoint at all").unwrap();
    let err = t.resume().unwrap_err().to_string();
    assert!(err.contains("checkpoint.safetensors") && err.contains("corrupt"), "{err}");
}

#[test]
fn config_errors_name_the_key_and_the_file() {
    let err = RunConfig::from_toml_str("epochs = 3\nlearning_rate = 0.1\n").unwrap_err().to_string();
    assert!(err.contains("learning_rate"), "{err}");
    let err = RunConfig::from_toml_str("[optimizer]\nkind = \"sgd\"\nlr = -0.5\n").unwrap_err().to_string();
    assert!(err.contains("lr"), "{err}");
    let err = RunConfig::from_toml_str("method = \"magic\"\n").unwrap_err().to_string();
    assert!(err.contains("magic") && err.contains("agm"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[agm]\nalpha = 1.0\nbogus = 2\n").unwrap();
    let err = RunConfig::from_toml_file(&path).unwrap_err().to_string();
    assert!(err.contains("bad.toml") && err.contains("bogus"), "{err}");
    // A partial file keeps every other default.
    let cfg = RunConfig::from_toml_str("epochs = 3\n[agm]\nalpha = 0.5\n").unwrap();
    assert_eq!(cfg.epochs, 3);
    assert_eq!(cfg.method::<agm_modulation::Agm>().alpha, 0.5);
    assert_eq!(cfg.method::<agm_modulation::Agm>().prob_floor, AgmConfig::av_digits().prob_floor);
    assert_eq!(RunConfig::from_toml_str(&RunConfig::av_digits().to_toml()).unwrap(), RunConfig::av_digits());
}

/// The default preset shows modality competition: in joint training the weaker modality's
/// Shapley accuracy stays well below what its encoder reaches alone.
#[test]
fn default_preset_shows_competition_over_three_seeds() {
    let data = av_digits::load(&AvDigitsConfig::default_preset()).unwrap();
    let (train, val, test) = (data.split(Split::Train), data.split(Split::Validation), data.split(Split::Test));
    let dev = Device::Cpu;
    let epochs = 8;
    for seed in 0..3u64 {
        let mut opts = options(epochs);
        opts.seed = seed;
        let joint = FusionModel::late_concat(&LateConcatConfig::av_digits(), seed, DType::F32, &dev).unwrap();
        Trainer::new(&joint, Box::new(Joint::new()), sgd(), opts.clone(), &dev)
            .unwrap()
            .fit(train, val, &mut agm_train::NoCallback)
            .unwrap();
        let report = agm_train::evaluate(&joint, test, 256, &dev).unwrap();
        let weaker = if report.modality_accuracy[0] < report.modality_accuracy[1] { 0 } else { 1 };
        let name = joint.modalities().name(weaker).to_string();

        // The same encoder with its own head, trained alone on that modality.
        let uni_cfg = LateConcatConfig::av_digits().only(&name).unwrap();
        let uni = FusionModel::late_concat(&uni_cfg, seed, DType::F32, &dev).unwrap();
        let one = |s: &agm_data::SplitTensors| s.only_modality(weaker);
        let (utrain, uval, utest) = (one(train), one(val), one(test));
        Trainer::new(&uni, Box::new(Joint::new()), sgd(), opts, &dev)
            .unwrap()
            .fit(&utrain, &uval, &mut agm_train::NoCallback)
            .unwrap();
        let alone = agm_train::evaluate(&uni, &utest, 256, &dev).unwrap().accuracy;
        let shapley = report.modality_accuracy[weaker];
        assert!(
            alone - shapley >= 0.05,
            "seed {seed}: {name} alone {alone:.3} vs its Shapley accuracy in joint training {shapley:.3}"
        );
    }
}

/// Saves snapshot `snap` after epoch `save` and restores it after epoch `restore`; trains as
/// joint training otherwise.
struct SnapshotThenRestore {
    save: usize,
    restore: usize,
}

impl Modulator for SnapshotThenRestore {
    fn name(&self) -> &'static str {
        "snapshot-then-restore"
    }
    fn on_epoch_end(
        &mut self,
        cx: &agm_modulation::EpochCx<'_>,
    ) -> candle_core::Result<Vec<agm_modulation::EpochAction>> {
        use agm_modulation::EpochAction::{RestoreSnapshot, SaveSnapshot};
        Ok(match cx.epoch {
            e if e == self.save => vec![SaveSnapshot("snap".into())],
            e if e == self.restore => vec![RestoreSnapshot("snap".into())],
            _ => Vec::new(),
        })
    }
}

struct EpochRates(Vec<f64>);

impl agm_train::Callback for EpochRates {
    fn on_epoch_end(&mut self, e: &agm_train::EpochSummary) -> agm_train::Flow {
        self.0.push(e.lr);
        agm_train::Flow::Continue
    }
}

#[test]
fn a_restored_snapshot_brings_back_its_learning_rate_and_the_schedule_decays_from_it() {
    // The reference's MSES reloads `optimizer.state_dict()` from the checkpoint of epoch 1,
    // whose scheduler had stepped: epoch 2's rate. A chained StepLR then keeps multiplying by
    // gamma at its step boundaries, so after the restore at the end of epoch 3 the rates are
    // epoch 2's, then half of it, and so on (not the schedule's 0.1 / 8, 0.1 / 16).
    let data = av_digits::load(&AvDigitsConfig::default_preset()).unwrap();
    let dev = Device::Cpu;
    let model = FusionModel::late_concat(&LateConcatConfig::av_digits(), 3, DType::F32, &dev).unwrap();
    let opts = TrainerOptions {
        base_lr: 0.1,
        schedule: agm_train::optim::ScheduleConfig::Step { step_size: 1, gamma: 0.5 },
        ..options(5)
    };
    let dir = tempfile::tempdir().unwrap();
    let modulator = Box::new(SnapshotThenRestore { save: 1, restore: 3 });
    let mut t = Trainer::new(&model, modulator, sgd(), opts.clone(), &dev)
        .unwrap()
        .with_run_dir(RunDir::create(dir.path()).unwrap());
    let mut rates = EpochRates(Vec::new());
    t.fit(data.split(Split::Train), data.split(Split::Validation), &mut rates).unwrap();
    assert_eq!(rates.0, [0.1, 0.05, 0.025, 0.05, 0.025]);

    // The factor survives a resume: stop after epoch 4, resume, epoch 5 still runs at 0.025.
    let dir = tempfile::tempdir().unwrap();
    let modulator = Box::new(SnapshotThenRestore { save: 1, restore: 3 });
    let stopped = TrainerOptions { epochs: 4, ..opts.clone() };
    let mut t = Trainer::new(&model, modulator, sgd(), stopped, &dev)
        .unwrap()
        .with_run_dir(RunDir::create(dir.path()).unwrap());
    t.fit(data.split(Split::Train), data.split(Split::Validation), &mut agm_train::NoCallback).unwrap();
    let modulator = Box::new(SnapshotThenRestore { save: 1, restore: 3 });
    let mut t =
        Trainer::new(&model, modulator, sgd(), opts, &dev).unwrap().with_run_dir(RunDir::open(dir.path()).unwrap());
    t.resume().unwrap();
    let mut rates = EpochRates(Vec::new());
    t.fit(data.split(Split::Train), data.split(Split::Validation), &mut rates).unwrap();
    assert_eq!(rates.0, [0.025]);
}

#[test]
fn an_epoch_is_scored_kept_and_measured_before_its_restore_puts_other_weights_back() {
    // Restoring epoch 1's snapshot at the end of epoch 3 must not change what epoch 3 reports:
    // its best weights and its reference-split accuracy are epoch 3's own, as the reference
    // evaluates and compares before its MSES reload.
    let data = av_digits::load(&AvDigitsConfig::default_preset()).unwrap();
    let (train, val, test) = (data.split(Split::Train), data.split(Split::Validation), data.split(Split::Test));
    let dev = Device::Cpu;
    // Epoch 3's row, the best weights kept, and the weights after the run.
    let run = |restore: usize| {
        let dir = tempfile::tempdir().unwrap();
        let model = FusionModel::late_concat(&LateConcatConfig::av_digits(), 3, DType::F32, &dev).unwrap();
        let modulator = Box::new(SnapshotThenRestore { save: 1, restore });
        let mut t = Trainer::new(&model, modulator, sgd(), options(3), &dev)
            .unwrap()
            .with_run_dir(RunDir::create(dir.path()).unwrap())
            .with_reference_split(test);
        t.fit(train, val, &mut agm_train::NoCallback).unwrap();
        let run_dir = RunDir::open(dir.path()).unwrap();
        let rows: Vec<agm_train::EpochSummary> = run_dir.read_metrics().unwrap();
        let best = agm_train::checkpoint::Checkpoint::load(&run_dir.best(), &dev).unwrap();
        let best: Vec<(String, Vec<f32>)> = weights(&model)
            .into_iter()
            .map(|(name, _)| {
                let kept = best.model[&name].flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1().unwrap();
                (name, kept)
            })
            .collect();
        (rows[2].clone(), best, weights(&model))
    };
    let (restored_row, restored_best, _) = run(3);
    let (row, best, epoch3) = run(0);
    assert_eq!((restored_row.best_epoch, row.best_epoch), (3, 3), "the test needs epoch 3 to be the best");
    // `assert!`, not `assert_eq!`: the weights are too long to print.
    assert!(best == epoch3, "the best weights are not the last epoch's");
    assert!(restored_best == epoch3, "the restoring run kept other weights as its best");
    assert_eq!(restored_row.reference_split, row.reference_split);
}

#[test]
fn a_borrowed_method_trains_as_a_boxed_one_and_is_read_after_the_trainer_is_gone() {
    let data = av_digits::load(&AvDigitsConfig::default_preset()).unwrap();
    let (train, val) = (data.split(Split::Train), data.split(Split::Validation));
    let dev = Device::Cpu;
    let cfg = LateConcatConfig::av_digits();

    let boxed = FusionModel::late_concat(&cfg, 3, DType::F32, &dev).unwrap();
    let boxed_run = Trainer::new(&boxed, agm(), sgd(), options(1), &dev)
        .unwrap()
        .fit(train, val, &mut agm_train::NoCallback)
        .unwrap();

    let borrowed = FusionModel::late_concat(&cfg, 3, DType::F32, &dev).unwrap();
    let mut method = Agm::new(AgmConfig::av_digits(), 2).unwrap();
    let borrowed_run = Trainer::new(&borrowed, Box::new(&mut method), sgd(), options(1), &dev)
        .unwrap()
        .fit(train, val, &mut agm_train::NoCallback)
        .unwrap();

    assert_eq!(weights(&boxed), weights(&borrowed));
    let last = borrowed_run.last.unwrap().last_coefficients.unwrap();
    assert_eq!(boxed_run.last.unwrap().last_coefficients.unwrap(), last);
    // The method's own state, read once the trainer that borrowed it has been dropped.
    assert_eq!(method.last_stats().unwrap().coeff, last);
}
