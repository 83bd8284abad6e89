//! `init_weights`: a run starts from given weights (the official code's checkpoint layout
//! included) instead of its seeded initialisation; weights that do not fit stop it before any
//! run state is written; a resumed run does not read them again.

use std::path::{Path, PathBuf};

use agm_train::run::{train_run, Concepts, RunOptions, RunStart};
use agm_train::{read_state_dict, NoCallback, RunConfig, RunDir};
use candle_core::{DType, Device};

/// An official-layout checkpoint (`net.` keys, int64 `num_batches_tracked`) of `av-digits-early`.
fn official_checkpoint() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/official/av-digits-early.ckpt_full_epoch7.pth.tar")
}

fn config(model: &str, init_weights: &Path) -> RunConfig {
    RunConfig {
        model: model.into(),
        method: "joint".into(),
        epochs: 1,
        init_weights: init_weights.to_string_lossy().into_owned(),
        ..RunConfig::av_digits()
    }
}

fn values(t: &candle_core::Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1().unwrap()
}

#[test]
fn a_run_starts_from_init_weights_and_resumes_without_them() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("ckpt_full_epoch7.pth.tar");
    std::fs::copy(official_checkpoint(), &file).unwrap();
    let cfg = config("av-digits-early", &file);
    cfg.check_input_files().unwrap();

    // The model a run builds holds the file's values, not the seeded initialisation's.
    let built = cfg.build(&Device::Cpu).unwrap();
    let file_values = read_state_dict(&file).unwrap();
    let seeded = RunConfig { init_weights: String::new(), ..cfg.clone() }.build(&Device::Cpu).unwrap();
    let mut differ = 0;
    for (v, s) in built.model.param_groups().all_sorted().iter().zip(seeded.model.param_groups().all_sorted()) {
        let expected = &file_values[&format!("net.{}", v.name)];
        assert_eq!(values(v.var.as_tensor()), values(expected), "{}", v.name);
        differ += usize::from(values(v.var.as_tensor()) != values(s.var.as_tensor()));
    }
    assert!(differ > 10, "the file's values equal the seeded initialisation's");

    let dir = RunDir::create(tmp.path().join("run")).unwrap();
    let opts = RunOptions { concepts: Some(Concepts::Off), ..RunOptions::default() };
    let first = train_run(&cfg, &dir, RunStart::New, &opts, &mut NoCallback).unwrap();
    assert!(first.finished());
    let recorded = dir.read_config().unwrap();
    assert_eq!(recorded.init_weights, cfg.init_weights, "config.toml records where the run started");

    // Resuming reads the checkpoint, not the (now missing) starting weights.
    std::fs::remove_file(&file).unwrap();
    let resumed = RunConfig { epochs: 2, ..recorded };
    let second = train_run(&resumed, &dir, RunStart::Resume { header: None }, &opts, &mut NoCallback).unwrap();
    assert_eq!(second.run.epochs_done, 2);
}

#[test]
fn init_weights_that_are_missing_or_do_not_fit_stop_the_run_before_it_writes_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nowhere.safetensors");
    let err = config("av-digits-early", &missing).check_input_files().unwrap_err().to_string();
    assert!(err.contains("nowhere.safetensors") && err.contains("no such file"), "{err}");

    // av-digits-early's weights into av-digits-late: keys missing and left over.
    let cfg = config("av-digits-late", &official_checkpoint());
    cfg.check_input_files().unwrap();
    let dir = RunDir::create(tmp.path().join("run")).unwrap();
    let opts = RunOptions { concepts: Some(Concepts::Off), ..RunOptions::default() };
    let err = train_run(&cfg, &dir, RunStart::New, &opts, &mut NoCallback).unwrap_err().to_string();
    assert!(err.contains("ckpt_full_epoch7.pth.tar") && err.contains("do not fit the model"), "{err}");
    assert!(!dir.root().exists(), "a run that could not start left its directory behind");

    // Weights holding NaN: named, refused before training.
    let nan = tmp.path().join("nan.safetensors");
    let mut tensors = read_state_dict(&official_checkpoint()).unwrap();
    let bias = tensors.get_mut("net.audio_encoder.1.bias").unwrap();
    *bias = bias.affine(0.0, f64::NAN).unwrap();
    candle_core::safetensors::save(&tensors, &nan).unwrap();
    let dir = RunDir::create(tmp.path().join("run-nan")).unwrap();
    let err = train_run(&config("av-digits-early", &nan), &dir, RunStart::New, &opts, &mut NoCallback)
        .unwrap_err()
        .to_string();
    assert!(err.contains("nan.safetensors") && err.contains("`net.audio_encoder.1.bias` holds NaN"), "{err}");
    assert!(!dir.root().exists());
}
