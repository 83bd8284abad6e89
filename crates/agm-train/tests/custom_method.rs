//! A method defined entirely in this file (its config, its hooks, its `Method` impl) and added
//! with one registry call trains through the path `cargo xtask train` takes: the resolver (flags
//! and its `[scale_grads]` section), then `agm_train::run::train_run` into a run directory.

use agm_modulation::{registry, BuildCx, EpochAction, Hooks, Method, MethodError, Modulator, StepCx};
use agm_train::run::{train_run, Concepts, RunOptions, RunOutcome, RunStart};
use agm_train::{NoCallback, RunConfig, RunDir, RunRequest};
use candle_core::backprop::GradStore;
use serde::{Deserialize, Serialize};

/// Multiplies every trainable gradient of the model by `factor`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ScaleGradsConfig {
    factor: f64,
}

impl Default for ScaleGradsConfig {
    fn default() -> Self {
        Self { factor: 1.0 }
    }
}

struct ScaleGrads {
    factor: f64,
}

impl Modulator for ScaleGrads {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn after_backward(&mut self, cx: &StepCx<'_>, grads: &mut GradStore) -> candle_core::Result<()> {
        for v in cx.model.param_groups().trainable() {
            if let Some(g) = grads.get(v.var.as_tensor()) {
                let scaled = g.affine(self.factor, 0.0)?;
                grads.insert(v.var.as_tensor(), scaled);
            }
        }
        Ok(())
    }

    fn coefficients(&self) -> Option<Vec<f64>> {
        Some(vec![self.factor])
    }
}

impl Method for ScaleGrads {
    const NAME: &'static str = "scale-grads";
    const HOOKS: Hooks = Hooks::EDITS;
    type Config = ScaleGradsConfig;

    fn preset(_dataset: &str) -> ScaleGradsConfig {
        ScaleGradsConfig::default()
    }

    fn validate(config: &ScaleGradsConfig) -> Result<(), MethodError> {
        if config.factor > 0.0 {
            Ok(())
        } else {
            Err(format!("scale_grads.factor must be > 0, not {}", config.factor).into())
        }
    }

    fn build(config: &ScaleGradsConfig, _cx: &BuildCx<'_>) -> Result<Self, MethodError> {
        Ok(Self { factor: config.factor })
    }
}

/// Resolves flags as `cargo xtask train` does and trains one epoch into a fresh directory.
fn train(method: &str, factor: Option<f64>) -> (tempfile::TempDir, RunOutcome) {
    let mut request = RunRequest::default().set("--method", "method", method).set("--epochs", "epochs", 1);
    if let Some(f) = factor {
        request = request.set("(test)", "scale_grads.factor", f);
    }
    let cfg: RunConfig = request.resolve().unwrap().config;
    let tmp = tempfile::tempdir().unwrap();
    let dir = RunDir::create(tmp.path().join("run")).unwrap();
    let opts = RunOptions { concepts: Some(Concepts::Off), ..RunOptions::default() };
    let outcome = train_run(&cfg, &dir, RunStart::New, &opts, &mut NoCallback).unwrap();
    (tmp, outcome)
}

/// Every tensor of the run's best weights, as raw bytes by name (file metadata, whose key order
/// is not fixed, left out).
fn weights(tmp: &tempfile::TempDir) -> Vec<(String, Vec<u8>)> {
    let tensors =
        candle_core::safetensors::load(tmp.path().join("run/best.safetensors"), &candle_core::Device::Cpu).unwrap();
    let mut out: Vec<(String, Vec<u8>)> = tensors
        .into_iter()
        .map(|(name, t)| {
            let values = t.flatten_all().unwrap().to_dtype(candle_core::DType::F32).unwrap().to_vec1::<f32>().unwrap();
            (name, values.iter().flat_map(|v| v.to_le_bytes()).collect())
        })
        .collect();
    out.sort();
    out
}

#[test]
fn a_method_from_a_test_file_trains_through_the_run_api() {
    registry::register::<ScaleGrads>().unwrap();
    // Registering the same type again is fine; another type under the name is not.
    registry::register::<ScaleGrads>().unwrap();
    assert!(registry::names().contains(&"scale-grads"));

    let (joint_dir, joint) = train("joint", None);
    let (same_dir, same) = train("scale-grads", Some(1.0));
    let (half_dir, half) = train("scale-grads", Some(0.5));
    // Factor 1 is plain joint training, bit for bit; 0.5 is not.
    assert!(!weights(&joint_dir).is_empty());
    assert_eq!(weights(&same_dir), weights(&joint_dir));
    assert_ne!(weights(&half_dir), weights(&joint_dir));
    assert!(joint.test.is_some() && same.test.is_some() && half.test.is_some());
    assert_eq!(half.run.last.as_ref().unwrap().last_coefficients, Some(vec![0.5]));

    // The run directory records the method's section, and summary.json is the outcome.
    let config = std::fs::read_to_string(half_dir.path().join("run/config.toml")).unwrap();
    assert!(config.contains("[scale_grads]") && config.contains("factor = 0.5"), "{config}");
    let back = RunOutcome::load(&RunDir::open(half_dir.path().join("run")).unwrap()).unwrap();
    assert_eq!(back.config, half.config);
    assert_eq!(back.test.unwrap().accuracy, half.test.unwrap().accuracy);

    // Its settings are checked like a built-in method's, naming the key.
    let err = RunRequest::default()
        .set("--method", "method", "scale-grads")
        .set("(test)", "scale_grads.factor", "big")
        .resolve()
        .unwrap_err()
        .to_string();
    assert!(err.contains("scale_grads.factor"), "{err}");
    let err = RunConfig::from_toml_str("method = \"scale-grads\"\n[scale_grads]\nfactor = -1.0\n").unwrap_err();
    assert!(err.to_string().contains("must be > 0"), "{err}");
}

/// Predicts class 0 for every sample, whatever the model says.
struct AlwaysZero;

impl Modulator for AlwaysZero {
    fn name(&self) -> &'static str {
        "always-zero"
    }

    fn predict(
        &self,
        _model: &dyn agm_core::MultimodalModel,
        pass: &agm_core::ModelOutput,
    ) -> candle_core::Result<Option<candle_core::Tensor>> {
        let (b, c) = pass.logits.dims2()?;
        let mut v = vec![0f32; b * c];
        (0..b).for_each(|i| v[i * c] = 1.0);
        Ok(Some(candle_core::Tensor::from_vec(v, (b, c), pass.logits.device())?.to_dtype(pass.logits.dtype())?))
    }
}

#[test]
fn evaluation_scores_a_method_that_predicts_with_its_own_parts() {
    let cfg = RunConfig::av_digits();
    let data = cfg.load_dataset().unwrap();
    let device = candle_core::Device::Cpu;
    let model = cfg.build_model(&data, &device).unwrap();
    let report =
        agm_train::evaluate_with(model.as_ref(), Some(&AlwaysZero), &data.validation, 64, &device, &mut |_, _| {})
            .unwrap();
    let labels = data.validation.batch(&(0..data.validation.len()).collect::<Vec<_>>(), &device).unwrap().labels;
    let zeros = labels.to_vec1::<u32>().unwrap().iter().filter(|&&y| y == 0).count();
    assert_eq!(report.accuracy, zeros as f64 / data.validation.len() as f64);
    // Without it, the model's own logits.
    let plain = agm_train::evaluate(model.as_ref(), &data.validation, 64, &device).unwrap();
    assert_ne!(plain.accuracy, report.accuracy);
}

#[test]
fn a_run_that_cannot_be_built_leaves_no_run_state_and_says_why() {
    // Re-learning and gradient blending need a held-out split, which synthetic data does not
    // have: refused before the first step, with the datasets that have one.
    for method in ["relearn", "gblend"] {
        let cfg = RunRequest::default()
            .set("--dataset", "dataset", "synthetic")
            .set("--method", "method", method)
            .resolve()
            .unwrap()
            .config;
        let tmp = tempfile::tempdir().unwrap();
        let dir = RunDir::create(tmp.path().join("run")).unwrap();
        let opts = RunOptions { concepts: Some(Concepts::Off), ..RunOptions::default() };
        let err = train_run(&cfg, &dir, RunStart::New, &opts, &mut NoCallback).unwrap_err().to_string();
        assert!(err.contains(&format!("method = `{method}`")) && err.contains("held-out split"), "{err}");
        assert!(err.contains("avmnist") && err.contains("synthetic have none"), "{err}");
        assert!(!dir.holds_run_state(), "{method}: a failed start left run state behind");
    }
}

/// Stops training at the end of epoch 2, as MSES does once every modality has stopped.
struct StopAtTwo;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StopAtTwoConfig {}

impl Modulator for StopAtTwo {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn on_epoch_end(&mut self, cx: &agm_modulation::EpochCx<'_>) -> candle_core::Result<Vec<EpochAction>> {
        Ok(if cx.epoch == 2 { vec![EpochAction::Stop] } else { Vec::new() })
    }
}

impl Method for StopAtTwo {
    const NAME: &'static str = "stop-at-two";
    const HOOKS: Hooks = Hooks::EDITS;
    type Config = StopAtTwoConfig;

    fn preset(_dataset: &str) -> StopAtTwoConfig {
        StopAtTwoConfig {}
    }

    fn validate(_config: &StopAtTwoConfig) -> Result<(), MethodError> {
        Ok(())
    }

    fn build(_config: &StopAtTwoConfig, _cx: &BuildCx<'_>) -> Result<Self, MethodError> {
        Ok(Self)
    }
}

#[test]
fn a_run_its_method_stops_early_is_finished_tested_and_summarised() {
    let _ = registry::register::<StopAtTwo>();
    let request = RunRequest::default().set("--method", "method", "stop-at-two").set("--epochs", "epochs", 4);
    let cfg: RunConfig = request.resolve().unwrap().config;
    let tmp = tempfile::tempdir().unwrap();
    let dir = RunDir::create(tmp.path().join("run")).unwrap();
    let opts = RunOptions { concepts: Some(Concepts::Off), ..RunOptions::default() };
    let outcome = train_run(&cfg, &dir, RunStart::New, &opts, &mut NoCallback).unwrap();
    assert_eq!((outcome.run.epochs_done, outcome.run.stopped_early), (2, true));
    assert!(outcome.finished() && outcome.test.is_some(), "a method's stop ends the run");
    let written = RunOutcome::load(&dir).unwrap();
    assert_eq!(written.run.epochs_done, 2);

    // Resuming it trains nothing more and reports the same run.
    let again =
        train_run(&cfg, &RunDir::open(dir.root()).unwrap(), RunStart::Resume { header: None }, &opts, &mut NoCallback);
    let again = again.unwrap();
    assert_eq!((again.run.epochs_done, again.finished()), (2, true));
}
