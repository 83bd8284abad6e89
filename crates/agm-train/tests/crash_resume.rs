//! Crash tests: runs stopped at several steps, or killed in the middle of a checkpoint write,
//! then resumed, must end bit for bit where an uninterrupted run ends: every tensor of the
//! final, best and checkpoint files, every metrics row (selected best epoch included). Also the
//! guards against NaN weights in checkpoints.

mod common;

use agm_core::MultimodalModel;
use agm_data::SplitTensors;
use agm_fusion::{FusionKind, FusionModel};
use agm_modulation::{Agm, AgmConfig, Modulator, Mses, MsesConfig, Relearn, RelearnConfig};
use agm_train::optim::{OptimizerConfig, ParamGroup};
use agm_train::{Checkpoint, RunConfig, RunDir, TrainError, Trainer, TrainerOptions};
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};

const TRAIN: usize = 96;
const BATCH: usize = 16;
const STEPS_PER_EPOCH: usize = TRAIN / BATCH;

/// Two modalities of 2×3 inputs; the label is which third of the range the audio sum falls in
/// (learnable, with visual noise on top), so accuracies move and tie across epochs.
fn split(n: usize, seed: u64) -> SplitTensors {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let audio: Vec<f32> = (0..n * 6).map(|_| rng.random_range(-1.0..1.0)).collect();
    let visual: Vec<f32> = (0..n * 6).map(|_| rng.random_range(-1.0..1.0)).collect();
    let labels = (0..n)
        .map(|i| {
            let s: f32 = audio[i * 6..i * 6 + 6].iter().sum::<f32>() + 0.5 * visual[i * 6];
            if s < -0.8 {
                0
            } else if s < 0.8 {
                1
            } else {
                2
            }
        })
        .collect();
    SplitTensors::new(vec![audio, visual], vec![vec![2, 3], vec![2, 3]], labels)
}

fn model() -> FusionModel {
    common::tiny_model(2, &FusionKind::LateConcat, true, 3, DType::F32)
}

fn options(epochs: usize, every: usize) -> TrainerOptions {
    TrainerOptions {
        epochs,
        batch_size: BATCH,
        eval_batch_size: 32,
        seed: 5,
        base_lr: 0.1,
        checkpoint_every_steps: every,
        ..RunConfig::av_digits().trainer_options()
    }
}

fn sgd(groups: Vec<ParamGroup>) -> candle_core::Result<Box<dyn agm_train::optim::Optimizer>> {
    let cfg: OptimizerConfig =
        serde_json::from_str(r#"{"kind": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0001}"#).unwrap();
    Ok(cfg.build(groups)?)
}

#[derive(Clone, Copy)]
enum Method {
    Agm {
        alpha: f64,
    },
    Mses,
    /// Diagnosing & Re-learning after every epoch from the second (it reads a held-out split).
    Relearn,
    /// A registered method with its AV-Digits settings, as `--method` builds it.
    Registered(&'static str),
}

impl Method {
    fn build(self, model: &FusionModel) -> Box<dyn Modulator> {
        match self {
            Method::Registered(name) => {
                let probe = split(1, 9).batch(&[0], &Device::Cpu).unwrap();
                let dims = agm_modulation::encoder_feature_dims(model, &probe).unwrap();
                let cx = agm_modulation::BuildCx::new(model, 5).with_feature_dims(&dims);
                agm_modulation::registry::build(name, &agm_modulation::MethodSettings::av_digits(), &cx).unwrap()
            }
            Method::Agm { alpha } => Box::new(Agm::new(AgmConfig { alpha, ..AgmConfig::av_digits() }, 2).unwrap()),
            Method::Mses => Box::new(Mses::new(&MsesConfig { patience: 0, ..MsesConfig::avmnist() }, 2).unwrap()),
            Method::Relearn => {
                let cfg = RelearnConfig { reinit_every: 1, max_reinits: 4, ..RelearnConfig::official() };
                Box::new(Relearn::new(cfg, 2).unwrap())
            }
        }
    }
}

/// One segment of a run, each in a fresh model and trainer.
#[derive(Clone, Copy, Debug)]
enum Segment {
    /// A callback stops training after this global step (a checkpoint is written).
    StopAt(usize),
    /// The `n`th checkpoint write of this segment dies after its temporary file.
    CrashOnWrite(usize),
    /// Runs to the end.
    Finish,
}

/// What a finished run leaves, in comparable form.
#[derive(Debug, PartialEq)]
struct Outcome {
    /// Model variables in memory, as bit patterns.
    weights: Vec<(String, Vec<u32>)>,
    /// Every tensor of `best.safetensors` and `checkpoint.safetensors`, as raw bytes.
    files: Vec<(String, Vec<u8>)>,
    /// metrics.jsonl without the timing and memory fields (the only ones that may differ).
    rows: Vec<String>,
    trainer_state: String,
    /// The method's state in the last checkpoint (JSON).
    modulator_state: String,
    best_epoch: usize,
    best_accuracy_bits: u64,
    global_step: usize,
}

fn tensor_bytes(t: &Tensor) -> Vec<u8> {
    let t = t.flatten_all().unwrap();
    match t.dtype() {
        DType::F32 => t.to_vec1::<f32>().unwrap().iter().flat_map(|x| x.to_bits().to_le_bytes()).collect(),
        DType::F64 => t.to_vec1::<f64>().unwrap().iter().flat_map(|x| x.to_bits().to_le_bytes()).collect(),
        DType::U32 => t.to_vec1::<u32>().unwrap().iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::I64 => t.to_vec1::<i64>().unwrap().iter().flat_map(|x| x.to_le_bytes()).collect(),
        other => panic!("unexpected dtype {other:?}"),
    }
}

fn file_tensors(label: &str, ck: &Checkpoint) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |prefix: String, map: &std::collections::HashMap<String, Tensor>| {
        out.extend(map.iter().map(|(k, v)| (format!("{label}:{prefix}{k}"), tensor_bytes(v))));
    };
    add("model/".into(), &ck.model);
    add("optim/".into(), &ck.optimizer);
    for (tag, s) in &ck.snapshots {
        add(format!("snapshot/{tag}/model/"), &s.model);
        add(format!("snapshot/{tag}/optim/"), &s.optimizer);
    }
    out.sort();
    out
}

fn run(method: Method, epochs: usize, every: usize, plan: &[Segment]) -> Outcome {
    let (train, val, holdout) = (split(TRAIN, 1), split(48, 2), split(36, 3));
    let dir = tempfile::tempdir().unwrap();
    let mut last = None;
    for (i, seg) in plan.iter().enumerate() {
        let model = model();
        let run_dir = if i == 0 { RunDir::create(dir.path()) } else { RunDir::open(dir.path()) }.unwrap();
        let mut t = Trainer::new(&model, method.build(&model), sgd, options(epochs, every), &Device::Cpu)
            .unwrap()
            .with_run_dir(run_dir)
            .with_holdout(&holdout);
        if i > 0 {
            t.resume().unwrap();
        }
        match *seg {
            Segment::StopAt(step) => {
                let s = t.fit(&train, &val, &mut common::StopAt(step)).unwrap();
                assert!(s.stopped_early && s.global_step == step, "{seg:?}: {s:?}");
            }
            Segment::CrashOnWrite(n) => {
                t = t.crash_on_checkpoint_write(n);
                let err = t.fit(&train, &val, &mut agm_train::NoCallback).unwrap_err().to_string();
                assert!(err.contains("failpoint"), "{seg:?}: {err}");
                let stale = std::fs::read_dir(dir.path())
                    .unwrap()
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| n.starts_with("checkpoint.safetensors.") && n.ends_with(".tmp"))
                    .count();
                assert!(stale >= 1, "the killed write leaves its temporary behind");
            }
            Segment::Finish => {
                let s = t.fit(&train, &val, &mut agm_train::NoCallback).unwrap();
                assert_eq!(s.epochs_done, epochs);
                let weights = model
                    .param_groups()
                    .all_sorted()
                    .into_iter()
                    .map(|v| {
                        let t = v.var.as_tensor().flatten_all().unwrap().to_dtype(DType::F32).unwrap();
                        (v.name, t.to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect())
                    })
                    .collect();
                last = Some((s, weights));
            }
        }
    }
    let (summary, weights) = last.expect("the plan ends with Finish");
    let best = Checkpoint::load(&dir.path().join("best.safetensors"), &Device::Cpu).unwrap();
    let ck = Checkpoint::load(&dir.path().join("checkpoint.safetensors"), &Device::Cpu).unwrap();
    let mut files = file_tensors("best", &best);
    files.extend(file_tensors("checkpoint", &ck));
    let text = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    // A method without coefficients leaves both fields null by design; no number is ever null.
    let checked = text.replace(r#""coefficients":null,"last_coefficients":null"#, "");
    assert!(!checked.contains("null"), "metrics.jsonl holds null: {text}");
    let rows = text
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            o.remove("mean_step_seconds");
            o.remove("peak_memory_bytes");
            v.to_string()
        })
        .collect();
    let mut state: serde_json::Value = serde_json::from_str(&ck.meta["trainer"]).unwrap();
    state.as_object_mut().unwrap().remove("epoch_seconds");
    Outcome {
        weights,
        files,
        rows,
        trainer_state: state.to_string(),
        modulator_state: ck.meta.get("modulator").cloned().unwrap_or_default(),
        best_epoch: summary.best_epoch,
        best_accuracy_bits: summary.best_accuracy.to_bits(),
        global_step: summary.global_step,
    }
}

fn assert_same(whole: &Outcome, resumed: &Outcome, what: &str) {
    assert_eq!(whole.rows.len(), resumed.rows.len(), "{what}: metrics rows");
    for (a, b) in whole.rows.iter().zip(&resumed.rows) {
        assert_eq!(a, b, "{what}: metrics row differs");
    }
    assert_eq!(whole.weights, resumed.weights, "{what}: final weights differ");
    let names = |o: &Outcome| o.files.iter().map(|f| f.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(whole), names(resumed), "{what}: file tensors");
    for (a, b) in whole.files.iter().zip(&resumed.files) {
        assert!(a.1 == b.1, "{what}: tensor {} differs", a.0);
    }
    assert_eq!(whole.trainer_state, resumed.trainer_state, "{what}: trainer state");
    assert_eq!(
        (whole.best_epoch, whole.best_accuracy_bits, whole.global_step),
        (resumed.best_epoch, resumed.best_accuracy_bits, resumed.global_step),
        "{what}: selection"
    );
}

#[test]
fn agm_runs_stopped_and_killed_mid_write_end_bit_for_bit_like_an_uninterrupted_run() {
    let method = Method::Agm { alpha: 1.0 };
    let epochs = 4;
    let whole = run(method, epochs, 4, &[Segment::Finish]);
    // Stops mid-epoch, at an epoch's last step (before its evaluation), and two killed writes.
    let plan = [
        Segment::StopAt(3),
        Segment::CrashOnWrite(2),
        Segment::StopAt(STEPS_PER_EPOCH * 2),
        Segment::StopAt(STEPS_PER_EPOCH * 2 + 1),
        Segment::CrashOnWrite(3),
        Segment::Finish,
    ];
    assert_same(&whole, &run(method, epochs, 4, &plan), "agm, checkpoints every 4 steps");
    // Only epoch-end writes: the killed one comes after that epoch's metrics row was appended.
    let whole = run(method, epochs, 0, &[Segment::Finish]);
    let plan = [Segment::StopAt(STEPS_PER_EPOCH + 2), Segment::CrashOnWrite(1), Segment::Finish];
    assert_same(&whole, &run(method, epochs, 0, &plan), "agm, epoch-end checkpoints");
}

#[test]
fn saturated_agm_coefficients_round_trip_through_checkpoints_and_metrics() {
    // alpha 1e6 saturates the coefficients near f64::MAX; their epoch mean is infinite.
    let method = Method::Agm { alpha: 1e6 };
    let whole = run(method, 2, 0, &[Segment::Finish]);
    assert!(whole.rows.iter().any(|r| r.contains("\"inf\"")), "expected infinite coefficients: {:?}", whole.rows);
    let plan = [Segment::StopAt(4), Segment::StopAt(STEPS_PER_EPOCH + 1), Segment::Finish];
    assert_same(&whole, &run(method, 2, 0, &plan), "agm alpha 1e6");
}

#[test]
fn mses_resumed_between_snapshot_save_and_restore_matches_an_uninterrupted_run() {
    let epochs = 6;
    let whole = run(Method::Mses, epochs, 0, &[Segment::Finish]);
    // MSES stops a modality (coefficient 0) at the epoch where it restores that modality's snapshot.
    let restore_epoch = whole
        .rows
        .iter()
        .map(|r| serde_json::from_str::<serde_json::Value>(r).unwrap())
        .find(|r| r["last_coefficients"].as_object().unwrap().values().any(|c| c.as_f64() == Some(0.0)))
        .map(|r| r["epoch"].as_u64().unwrap() as usize)
        .expect("some modality stops within the run");
    assert!(restore_epoch >= 2, "the snapshot is saved at the end of epoch 1 at the earliest");
    let stop = (restore_epoch - 1) * STEPS_PER_EPOCH + 2;
    let plan = [Segment::StopAt(stop), Segment::CrashOnWrite(1), Segment::Finish];
    let resumed = run(Method::Mses, epochs, 0, &plan);
    assert_same(&whole, &resumed, "mses");
    assert!(resumed.files.iter().any(|f| f.0.starts_with("checkpoint:snapshot/")), "snapshots are in the checkpoint");
}

#[test]
fn relearn_resumed_between_re_learnings_matches_an_uninterrupted_run() {
    // Re-learning after epochs 2..=5 blends the encoders towards their initial copies, which a
    // resumed run must read back from the checkpoint (they are method variables there).
    let epochs = 5;
    let whole = run(Method::Relearn, epochs, 0, &[Segment::Finish]);
    let plan = [Segment::StopAt(2 * STEPS_PER_EPOCH + 3), Segment::CrashOnWrite(1), Segment::Finish];
    let resumed = run(Method::Relearn, epochs, 0, &plan);
    assert_same(&whole, &resumed, "relearn");
    assert!(
        resumed.files.iter().any(|f| f.0.starts_with("checkpoint:model/method.relearn.init.")),
        "the initial encoder copies are in the checkpoint"
    );
    assert_eq!(whole.modulator_state, resumed.modulator_state, "relearn: method state");
    let state: serde_json::Value = serde_json::from_str(&whole.modulator_state).unwrap();
    assert_eq!((state["reinits"].as_u64(), state["diagnosed_epoch"].as_u64()), (Some(4), Some(5)), "{state}");
}

#[test]
fn a_nan_buffer_is_never_written_and_a_nan_checkpoint_is_never_resumed() {
    let (train, val) = (split(TRAIN, 1), split(48, 2));
    let dir = tempfile::tempdir().unwrap();
    let model = model();
    let buffer = model.param_groups().all_sorted().into_iter().find(|v| v.name.contains("running_mean")).unwrap();
    let mut t = Trainer::new(&model, Method::Agm { alpha: 1.0 }.build(&model), sgd, options(2, 2), &Device::Cpu)
        .unwrap()
        .with_run_dir(RunDir::create(dir.path()).unwrap());
    let err = t.fit(&train, &val, &mut common::PoisonAfter(buffer.var.clone(), 3)).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, TrainError::NonFiniteTensor { .. }), "{msg}");
    assert!(msg.contains(&format!("`{}`", buffer.name)) && msg.contains("checkpoint.safetensors"), "{msg}");
    assert!(msg.contains("step 4"), "{msg}");
    // The checkpoint of step 2 is intact, and nothing else was left behind.
    let path = dir.path().join("checkpoint.safetensors");
    let good = Checkpoint::load(&path, &Device::Cpu).unwrap();
    let names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");

    // A checkpoint holding NaN (written by hand, as the version before checksums wrote files, so
    // that the NaN check refuses it, not the checksum) is refused on resume, naming file and tensor.
    let mut victims: Vec<&String> = good.model.keys().filter(|k| k.ends_with("bias")).collect();
    victims.sort();
    let victim = format!("model/{}", victims[0]);
    let bytes = std::fs::read(&path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta = header.metadata().clone().unwrap();
    meta.remove("checksum");
    meta.insert("format".into(), "agm-checkpoint-v1".into());
    let mut tensors: Vec<(String, Tensor)> = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, v)| if k == victim { (k, (v.ones_like().unwrap() * f64::NAN).unwrap()) } else { (k, v) })
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let poisoned = safetensors::serialize(tensors.iter().map(|(k, v)| (k.as_str(), v)), Some(meta)).unwrap();
    std::fs::write(&path, poisoned).unwrap();
    let model = common::tiny_model(2, &FusionKind::LateConcat, true, 3, DType::F32);
    let mut t = Trainer::new(&model, Method::Agm { alpha: 1.0 }.build(&model), sgd, options(2, 2), &Device::Cpu)
        .unwrap()
        .with_run_dir(RunDir::open(dir.path()).unwrap());
    let msg = t.resume().unwrap_err().to_string();
    let named = format!("`{}`", &victim["model/".len()..]);
    assert!(msg.contains("checkpoint.safetensors") && msg.contains(&named) && msg.contains("NaN"), "{msg}");
}

/// Every registered method, stopped mid-epoch and at an epoch's last step, then resumed, ends bit
/// for bit like its uninterrupted run (weights, method variables, optimizer state, metrics and
/// the method's saved state).
#[test]
fn every_registered_method_resumed_mid_run_matches_an_uninterrupted_run() {
    let epochs = 3;
    // And a stack whose two methods each log coefficients (summed per method within an epoch).
    for name in agm_modulation::registry::names().into_iter().chain(["agm+ogm-ge"]) {
        let method = Method::Registered(name);
        let whole = run(method, epochs, 0, &[Segment::Finish]);
        let plan = [Segment::StopAt(2), Segment::StopAt(STEPS_PER_EPOCH * 2), Segment::Finish];
        assert_same(&whole, &run(method, epochs, 0, &plan), name);
        let by_method = whole.rows.iter().all(|r| r.contains(r#""coefficients_by_method":{"agm":{"#));
        assert_eq!(by_method, name.contains('+'), "{name}: {:?}", whole.rows[0]);
    }
}

#[test]
fn a_resumed_run_keeps_its_first_start_and_lists_each_resume() {
    use agm_train::run::{train_run, Concepts, Provenance, RunOptions, RunOutcome, RunStart};
    let tmp = tempfile::tempdir().unwrap();
    let dir = RunDir::create(tmp.path().join("run")).unwrap();
    let cfg = RunConfig { epochs: 2, ..RunConfig::av_digits() };
    let opts = |command: &str, started: &str| RunOptions {
        provenance: Provenance {
            started: started.into(),
            ..Provenance::started_now(vec!["cargo xtask".into(), command.into()], None)
        },
        concepts: Some(Concepts::Off),
    };
    let stopped = train_run(&cfg, &dir, RunStart::New, &opts("first", "2001-01-01T00:00:00Z"), &mut common::StopAt(3));
    assert!(stopped.unwrap().test.is_none(), "stopped in epoch 1");
    let resume = RunStart::Resume { header: None };
    let stopped =
        train_run(&cfg, &dir, resume.clone(), &opts("second", "2002-01-01T00:00:00Z"), &mut common::StopAt(12));
    assert!(stopped.unwrap().test.is_none(), "stopped again");
    train_run(&cfg, &dir, resume, &opts("third", "2003-01-01T00:00:00Z"), &mut agm_train::NoCallback).unwrap();
    let summary = RunOutcome::load(&dir).unwrap().provenance;
    assert_eq!((summary.started.as_str(), summary.command_line[1].as_str()), ("2001-01-01T00:00:00Z", "first"));
    let resumes: Vec<(&str, &str)> =
        summary.resumes.iter().map(|r| (r.started.as_str(), r.command_line[1].as_str())).collect();
    assert_eq!(resumes, [("2002-01-01T00:00:00Z", "second"), ("2003-01-01T00:00:00Z", "third")]);
    // A summary written before resumes were recorded still reads.
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.summary()).unwrap()).unwrap();
    json["provenance"].as_object_mut().unwrap().remove("resumes");
    let old: RunOutcome = serde_json::from_value(json).unwrap();
    assert!(old.provenance.resumes.is_empty());
}

#[test]
fn what_a_driver_writes_after_the_run_is_written_under_the_runs_lock() {
    use agm_train::run::{train_run, Concepts, RunOptions, RunStart};
    /// Records what taking the lock again said when the run's files were written.
    struct Report(Option<String>);
    impl agm_train::Callback for Report {
        fn on_run_written(&mut self, dir: &RunDir) {
            assert!(dir.summary().exists(), "the finished run's summary.json is written first");
            self.0 = Some(dir.lock().map(drop).map_err(|e| e.to_string()).unwrap_err());
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = RunDir::create(tmp.path().join("run")).unwrap();
    let cfg = RunConfig { epochs: 1, ..RunConfig::av_digits() };
    let opts = RunOptions { concepts: Some(Concepts::Off), ..RunOptions::default() };
    let mut report = Report(None);
    train_run(&cfg, &dir, RunStart::New, &opts, &mut report).unwrap();
    let refused = report.0.expect("the hook ran");
    assert!(refused.contains("in use by another run"), "{refused}");
    // Released once the run returns.
    dir.lock().unwrap();
}
