//! OGM-GE, MSLR, MSES and stacks through the run configuration, as `cargo xtask train --method`
//! builds them, on AV-Digits; and the configuration errors they bring.

use agm_core::MultimodalModel;
use agm_data::SplitTensors;
use agm_modulation::{Agm, Mses, MsesConfig, Mslr, OgmGe, OgmMode};
use agm_train::{Callback, EpochSummary, Flow, RunConfig, TrainError};
use candle_core::Device;

/// Records every epoch row.
#[derive(Default)]
struct Rows(Vec<EpochSummary>);
impl Callback for Rows {
    fn on_epoch_end(&mut self, e: &EpochSummary) -> Flow {
        self.0.push(e.clone());
        Flow::Continue
    }
}

/// Trains `cfg` as `cargo xtask train` does (without a run directory) and returns the rows.
fn train(cfg: &RunConfig) -> (agm_train::RunSummary, Vec<EpochSummary>) {
    cfg.validate().unwrap();
    let device = Device::Cpu;
    let built = cfg.build(&device).unwrap_or_else(|e| panic!("{}: {e}", cfg.method));
    let (train, validation) = (&built.data.train, &built.data.validation);
    let mut trainer = cfg.trainer(built.model.as_ref(), built.modulator, &built.data, &device).unwrap();
    let mut rows = Rows::default();
    let summary = trainer.fit(train, validation, &mut rows).unwrap_or_else(|e| panic!("{}: {e}", cfg.method));
    (summary, rows.0)
}

fn with(method: &str, epochs: usize) -> RunConfig {
    RunConfig { method: method.into(), epochs, ..RunConfig::av_digits() }
}

#[test]
fn each_method_trains_on_av_digits() {
    for (method, epochs) in [("ogm-ge", 2), ("mslr", 2), ("mses", 2), ("agm+ogm-ge", 1), ("agm+mslr+mses", 1)] {
        let (summary, rows) = train(&with(method, epochs));
        assert_eq!(summary.epochs_done, epochs, "{method}");
        assert_eq!(rows.len(), epochs, "{method}");
        for r in &rows {
            assert!(r.train_loss.is_finite() && r.validation.accuracy > 0.2, "{method}: {r:?}");
            let c = r.last_coefficients.as_ref().unwrap_or_else(|| panic!("{method} reports no coefficients"));
            assert_eq!(c.len(), 2, "{method}");
        }
        match method {
            // Within its window OGM damps the dominant modality only.
            "ogm-ge" => {
                let c = rows[0].last_coefficients.as_ref().unwrap();
                assert!(c.iter().all(|&k| k > 0.0 && k <= 1.0) && c.contains(&1.0), "{c:?}");
            }
            // The AV-MNIST preset: 1.3 / 0.7 until five epochs are remembered.
            "mslr" => assert_eq!(rows[1].last_coefficients, Some(vec![1.3, 0.7])),
            _ => {}
        }
    }
}

/// Every variable's bits, by name.
type Bits = Vec<(String, Vec<u32>)>;

fn bits(model: &dyn MultimodalModel) -> Bits {
    model
        .param_groups()
        .all_sorted()
        .into_iter()
        .map(|v| {
            (
                v.name,
                v.var
                    .as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect(),
            )
        })
        .collect()
}

/// Trains `cfg` on AV-Digits with validation labels shifted by one digit, so that the validation
/// losses only grow; returns the summary, the coefficients per epoch and the final weights.
fn train_with_wrong_validation_labels(cfg: &RunConfig) -> (agm_train::RunSummary, Vec<Vec<f64>>, Bits) {
    let device = Device::Cpu;
    let built = cfg.build(&device).unwrap();
    let (train, validation) = (&built.data.train, &built.data.validation);
    let m = validation.num_modalities();
    let wrong = SplitTensors::new(
        (0..m).map(|x| validation.modality_data(x).to_vec()).collect(),
        (0..m).map(|x| validation.sample_shape(x).to_vec()).collect(),
        validation.labels().iter().map(|y| (y + 1) % 10).collect(),
    );
    let mut trainer = cfg.trainer(built.model.as_ref(), built.modulator, &built.data, &device).unwrap();
    let mut rows = Rows::default();
    let summary = trainer.fit(train, &wrong, &mut rows).unwrap();
    let coeffs = rows.0.iter().map(|r| r.last_coefficients.clone().unwrap()).collect();
    (summary, coeffs, bits(built.model.as_ref()))
}

#[test]
fn mses_stopping_at_a_first_epoch_best_restores_it_where_the_reference_crashes() {
    // Patience 0 and validation losses that only grow: at epoch 2 both modalities stop with
    // their best at epoch 1, where the AV-MNIST reference tries to load a checkpoint it never
    // wrote. The trainer restores the epoch-1 snapshot and stops.
    let mut cfg = with("mses", 4);
    cfg.set_method::<Mses>(&MsesConfig { patience: 0, ..MsesConfig::avmnist() });
    let (summary, coeffs, weights) = train_with_wrong_validation_labels(&cfg);
    assert_eq!(coeffs, vec![vec![1.0, 1.0], vec![0.0, 0.0]]);
    assert!(summary.stopped_early);
    assert_eq!(summary.epochs_done, 2);
    // The weights are those after epoch 1 (bit for bit): the snapshot was restored.
    let (_, _, after_one) = train_with_wrong_validation_labels(&RunConfig { epochs: 1, ..cfg.clone() });
    assert_eq!(weights, after_one, "the epoch-1 state was not restored");
    // UR-Funny's policy keeps the epoch-2 weights instead (no reload of a first-epoch best).
    let mut skip = cfg;
    skip.set_method::<Mses>(&MsesConfig { patience: 0, ..MsesConfig::urfunny() });
    let (summary, coeffs, weights) = train_with_wrong_validation_labels(&skip);
    assert_eq!((summary.epochs_done, coeffs.len()), (2, 2));
    assert_ne!(weights, after_one);
}

#[test]
fn bad_method_configurations_are_rejected_naming_the_field_and_the_allowed_values() {
    let err = |toml: &str| RunConfig::from_toml_str(toml).unwrap_err().to_string();
    let e = err("method = \"ogmx\"\n");
    assert!(e.contains("method") && e.contains("`ogmx` is not known") && e.contains("ogm-ge, mslr, mses"), "{e}");
    let e = err("method = \"agm+\"\n");
    assert!(e.contains("empty name"), "{e}");
    let e = err("method = \"mslr+mslr\"\n");
    assert!(e.contains("cannot be stacked") && e.contains("twice"), "{e}");
    for alpha in ["0.0", "-0.5"] {
        let e = err(&format!("method = \"ogm-ge\"\n[ogm_ge]\nalpha = {alpha}\n"));
        assert!(e.contains("ogm_ge.alpha") && e.contains("> 0"), "{e}");
    }
    let e = err("[ogm_ge]\nmode = \"faithful\"\n");
    assert!(e.contains("ogm_ge.mode") && e.contains("reference, paper"), "{e}");
    let e = err("[ogm_ge]\nnoise_std = 1.0\n");
    assert!(e.contains("noise_std") && e.contains("alpha"), "{e}");
    let e = err("[mses]\nbest_at_first_epoch = \"crash\"\n");
    assert!(e.contains("mses.best_at_first_epoch") && e.contains("restore, skip"), "{e}");
    let e = err("[mslr]\ninit = [1.0, 0.0]\n");
    assert!(e.contains("mslr.init"), "{e}");

    // What depends on the model is checked when the method is built.
    let device = Device::Cpu;
    let build = |cfg: RunConfig| -> String {
        let model = cfg.build_model(&cfg.load_dataset().unwrap(), &device).unwrap();
        match cfg.build_modulator(model.as_ref(), &cfg.load_dataset().unwrap()) {
            Err(TrainError::Config(e)) => e,
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("{} was accepted", cfg.method),
        }
    };
    let mut cfg = with("ogm-ge", 1);
    cfg.set_method::<OgmGe>(&agm_modulation::OgmGeConfig { mode: OgmMode::Reference, ..cfg.method::<OgmGe>() });
    let e = build(cfg);
    assert!(e.contains("4-D") && e.contains("mode = paper"), "{e}");
    let mut cfg = with("agm+mslr", 1);
    cfg.set_method::<Mslr>(&agm_modulation::MslrConfig { init: vec![1.0, 1.0, 1.0], ..cfg.method::<Mslr>() });
    let e = build(cfg);
    assert!(e.contains("mslr.init has 3 values but the model has 2"), "{e}");
}

#[test]
fn method_sections_round_trip_and_default_to_the_av_digits_presets() {
    let cfg = RunConfig::from_toml_str(
        "method = \"agm+ogm-ge\"\n[ogm_ge]\nmode = \"reference\"\nalpha = 0.8\nwindow_end = 50\n[mses]\npatience = 3\n",
    )
    .unwrap();
    let ogm = cfg.method::<OgmGe>();
    assert_eq!(ogm.mode, OgmMode::Reference);
    assert_eq!((ogm.alpha, ogm.window_end), (0.8, Some(50)));
    assert_eq!(ogm.noise, agm_modulation::OgmGeConfig::av_digits().noise);
    assert_eq!(cfg.method::<Mses>().patience, 3);
    assert_eq!(cfg.method::<Mslr>(), agm_modulation::MslrConfig::av_digits());
    assert_eq!(RunConfig::from_toml_str(&cfg.to_toml()).unwrap(), cfg);
    // A run's own config.toml is read as `--config` reads a file: the line, the key, a suggestion.
    let e = RunConfig::from_toml_str("# header\nepochs = 2\nshapley_mode = \"fast\"\n").unwrap_err().to_string();
    assert!(e.contains("line 3, `shapley_mode`: unknown field") && e.contains("(did you mean `shapley`?)"), "{e}");
    let e = RunConfig::from_toml_str("[optimizer]\nkind = \"sgd\"\nlr = \"fast\"\n").unwrap_err().to_string();
    assert!(e.contains("line 3, `optimizer.lr`"), "{e}");
    let e = RunConfig::from_toml_str("[optimizer]\nkind = \"sgd\"\nmomentom = 0.9\n").unwrap_err().to_string();
    assert!(e.contains("line 3, `optimizer.momentom`") && e.contains("did you mean `momentum`"), "{e}");
    let e = RunConfig::from_toml_str("[ogm_gee]\nalpha = 1.0\n").unwrap_err().to_string();
    assert!(e.contains("unknown field `ogm_gee`") && e.contains("ogm_ge"), "{e}");
}

#[test]
fn a_run_config_keeps_only_the_sections_of_its_methods_and_reads_back_to_the_same_run() {
    let mut cfg = RunConfig::for_dataset("avmnist").unwrap();
    cfg.data = "data/avmnist".into();
    cfg.method = "agm+ogm-ge".into();
    cfg.set_method::<Mslr>(&agm_modulation::MslrConfig { window: 9, ..cfg.method::<Mslr>() });
    let text = cfg.to_run_toml("Written by a test.\nSecond line.");
    assert!(text.starts_with("# Written by a test.\n# Second line.\n"), "{text}");
    let table: toml::Table = toml::from_str(&text).unwrap();
    assert!(table.contains_key("agm") && table.contains_key("ogm_ge"), "{text}");
    for unused in
        agm_modulation::registry::entries().iter().map(|e| e.section()).filter(|s| s != "agm" && s != "ogm_ge")
    {
        assert!(!table.contains_key(&unused), "`[{unused}]` should be left out:\n{text}");
    }
    let back = RunConfig::from_toml_str(&text).unwrap();
    assert_eq!((back.method::<Agm>(), back.method::<OgmGe>()), (cfg.method::<Agm>(), cfg.method::<OgmGe>()));
    // Not equal (the unused MSLR section is not the default), yet the same run.
    assert_ne!(back, cfg);
    assert!(back.same_run(&cfg) && cfg.same_run(&back));
    assert!(!RunConfig { seed: 1, ..back.clone() }.same_run(&cfg));
    // The concepts' folder changes what is measured, not what trains.
    assert!(RunConfig { concepts: "elsewhere".into(), train_concepts: false, ..back.clone() }.same_run(&cfg));
    // One data folder however it is written; another folder is another run.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("ave")).unwrap();
    let at = |data: String| RunConfig { data, ..back.clone() };
    let folder = tmp.path().join("ave").display().to_string();
    assert!(at(format!("{folder}/")).same_run(&at(format!("{}/./ave", tmp.path().display()))));
    assert!(!at(folder.clone()).same_run(&at(tmp.path().display().to_string())));
    assert!(at("not/here/".into()).same_run(&at("./not/here".into())));
    assert!(!at("hf://user/ave".into()).same_run(&at("hf://user/ave2".into())));
    // What differs is named, key by key; sections of unused methods are no difference.
    assert!(back.run_differences(&cfg).is_empty());
    let other = RunConfig { seed: 1, epochs: cfg.epochs + 1, ..back.clone() };
    let expected = [("epochs", (cfg.epochs + 1).to_string(), cfg.epochs.to_string()), ("seed", "1".into(), "0".into())];
    assert_eq!(other.run_differences(&cfg), expected.map(|(k, a, b)| (k.to_string(), a, b)));
    // Everything the run uses is the same: rebuild with the dropped sections and compare.
    let mut restored = back;
    for entry in agm_modulation::registry::entries().into_iter().filter(|e| !["agm", "ogm-ge"].contains(&e.name)) {
        let section = entry.section();
        restored.methods.set_section(&section, cfg.methods.section(&section).unwrap().clone()).unwrap();
    }
    assert_eq!(restored, cfg);
}

/// AV-Digits' noise preset and the synthetic scale belong to one dataset each: another dataset's
/// run neither records nor takes them.
#[test]
fn a_runs_config_records_only_its_datasets_settings_and_refuses_the_others() {
    let ave = RunConfig::for_dataset("ave").unwrap();
    let table: toml::Table = toml::from_str(&ave.to_run_toml("")).unwrap();
    assert!(!table.contains_key("data_preset") && !table.contains_key("synthetic_scale"), "{table}");
    // `--print-config` shows what the run uses, too.
    let whole: toml::Table = toml::from_str(&ave.to_toml()).unwrap();
    assert!(!whole.contains_key("data_preset") && whole.contains_key("agm"), "{whole}");
    assert_eq!(RunConfig::from_toml_str(&ave.to_toml()).unwrap(), ave);
    // A run directory of an earlier version recorded the ignored preset: it still reads.
    let older = format!("data_preset = \"balanced\"\nsynthetic_scale = \"reference\"\n{}", ave.to_run_toml(""));
    assert!(RunConfig::from_toml_str(&older).unwrap().same_run(&ave));
    assert!(RunConfig::from_toml_str(&ave.to_run_toml("")).unwrap().same_run(&ave));
    assert_eq!(ave.dataset_label(), "ave");
    let digits: toml::Table = toml::from_str(&RunConfig::av_digits().to_run_toml("")).unwrap();
    assert!(digits.contains_key("data_preset") && !digits.contains_key("synthetic_scale"));
    assert_eq!(RunConfig::av_digits().dataset_label(), "av-digits (noisy-audio preset)");
    let e = RunConfig { data_preset: "balanced".into(), ..ave.clone() }.validate().unwrap_err().to_string();
    assert!(e.contains("data_preset = `balanced` chooses") && e.contains("`ave`"), "{e}");
    let e = RunConfig { synthetic_scale: "reference".into(), ..ave }.validate().unwrap_err().to_string();
    assert!(e.contains("synthetic_scale = `reference`") && e.contains("`ave`"), "{e}");
}

/// ReLearn re-initialises encoders in its epoch end; the official script saves its best model
/// before that, and so does the trainer: the best weights score what their row says, and the
/// competition strength is measured on the model that was scored.
#[test]
fn a_relearning_epochs_best_weights_are_the_ones_it_was_scored_with() {
    let cfg = agm_train::RunRequest::default()
        .set("--method", "method", "relearn")
        .set("--epochs", "epochs", 3)
        .set("(test)", "relearn.reinit_every", 1)
        .resolve()
        .unwrap()
        .config;
    let device = Device::Cpu;
    let built = cfg.build(&device).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (train, validation) = (&built.data.train, &built.data.validation);
    let mut trainer = cfg
        .trainer(built.model.as_ref(), built.modulator, &built.data, &device)
        .unwrap()
        .with_run_dir(agm_train::RunDir::create(dir.path()).unwrap());
    let mut rows = Rows::default();
    let summary = trainer.fit(train, validation, &mut rows).unwrap();
    // Epochs 2 and 3 re-learn (after 1-based epochs 1 + j).
    assert!(summary.best_epoch >= 2, "the test needs a re-learning epoch to be the best: {}", summary.best_epoch);
    trainer.load_best().unwrap();
    let rescored = trainer.evaluate(validation, &mut |_, _| {}).unwrap();
    assert_eq!(rescored.accuracy, summary.best_accuracy);
    assert_eq!(rows.0[summary.best_epoch - 1].validation.accuracy, summary.best_accuracy);
}
