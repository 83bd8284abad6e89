//! Recipes and the shared resolver: every recipe parses, resolves and trains one step of its
//! model at the reference's input shapes; a dataset without a recipe gets its reference
//! settings; the Shapley mode follows the encoders.

use agm_core::ShapleyMode;
use agm_train::recipes::{self, RECIPES};
use agm_train::{Callback, EpochSummary, Flow, RunConfig, RunRequest, StepSummary};
use candle_core::Device;

/// Stops after the first step and keeps its loss.
#[derive(Default)]
struct FirstStep(Option<f64>);

impl Callback for FirstStep {
    fn on_step(&mut self, s: &StepSummary) -> Flow {
        self.0 = Some(s.loss);
        Flow::Stop
    }
}

#[test]
fn every_recipe_resolves_and_trains_one_step_of_its_model_at_the_reference_shapes() {
    let device = Device::Cpu;
    for recipe in RECIPES {
        let resolved = RunRequest::default().recipe(recipe.name).set("--data", "data", "unused").resolve();
        let cfg = resolved.unwrap_or_else(|e| panic!("{}: {e}", recipe.name)).config;
        assert_eq!(cfg.dataset, recipe.dataset().unwrap(), "{}", recipe.name);
        assert_eq!(cfg.shapley, "faithful", "{}: paper recipes run the reference's passes", recipe.name);
        assert!(cfg.reference_protocol, "{}", recipe.name);
        assert!(!recipe.summary().is_empty(), "{} has no summary line", recipe.name);
        // The same model and method on seeded data of the model's input shapes.
        let cfg = RunConfig {
            dataset: "synthetic".into(),
            data: String::new(),
            synthetic_scale: "reference".into(),
            batch_size: 2,
            ..cfg
        };
        cfg.validate().unwrap_or_else(|e| panic!("{}: {e}", recipe.name));
        let built = cfg.build(&device).unwrap_or_else(|e| panic!("{}: {e}", recipe.name));
        let train = cfg.train_source(&built.data);
        let mut trainer = cfg.trainer(built.model.as_ref(), built.modulator, &built.data, &device).unwrap();
        let mut first = FirstStep::default();
        trainer.fit(train.as_ref(), &built.data.validation, &mut first).unwrap();
        let loss = first.0.unwrap_or_else(|| panic!("{}: no step ran", recipe.name));
        assert!(loss.is_finite(), "{}: loss {loss}", recipe.name);
    }
}

/// A resume compares the settings its checkpoint recorded with the run's `config.toml` read
/// back; for every recipe (AGM's also stacked with OGM-GE) they must be the same, though
/// `config.toml` leaves out the sections of unused methods and the dataset's defaults differ
/// from the AV-Digits ones a file is read over.
#[test]
fn every_recipe_s_settings_read_back_from_its_config_toml_as_the_checkpoint_records_them() {
    for recipe in RECIPES {
        let cfg = RunRequest::default().recipe(recipe.name).set("--data", "data", "unused").resolve().unwrap().config;
        let stacked = (cfg.method == "agm").then(|| RunConfig { method: "agm+ogm-ge".into(), ..cfg.clone() });
        for cfg in std::iter::once(cfg).chain(stacked) {
            let back = RunConfig::from_toml_str(&cfg.to_run_toml("a header")).unwrap();
            assert_eq!(back.resumable_identity(), cfg.resumable_identity(), "{} ({})", recipe.name, cfg.method);
            let moved = RunConfig { epochs: cfg.epochs + 5, device: "cuda".into(), data: "moved".into(), ..back };
            assert_eq!(moved.resumable_identity(), cfg.resumable_identity(), "{}: epochs, device, data", recipe.name);
        }
    }
}

#[test]
fn recipes_are_unique_and_cover_each_dataset_with_joint_and_agm() {
    for (i, r) in RECIPES.iter().enumerate() {
        assert!(RECIPES[..i].iter().all(|o| o.name != r.name), "{} twice", r.name);
        assert!(r.name.starts_with(&r.dataset().unwrap()), "{} is not named after its dataset", r.name);
    }
    for dataset in ["avmnist", "cremad", "urfunny", "ave", "mosei"] {
        let methods: Vec<String> = recipes::for_dataset(dataset)
            .iter()
            .map(|r| r.table().unwrap()["method"].as_str().unwrap().to_string())
            .collect();
        assert!(methods.iter().any(|m| m == "joint") && methods.iter().any(|m| m == "agm"), "{dataset}: {methods:?}");
    }
    let err = recipes::find("avmnist-magic").unwrap_err().to_string();
    assert!(err.contains("avmnist-magic") && err.contains("avmnist-agm-late"), "{err}");
}

#[test]
fn a_dataset_without_a_recipe_resolves_to_its_reference_settings() {
    let resolved =
        RunRequest::default().set("--dataset", "dataset", "avmnist").set("--data", "data", "x").resolve().unwrap();
    let cfg = &resolved.config;
    assert_eq!(cfg.model, "avmnist-late");
    assert_eq!(
        (cfg.epochs, cfg.batch_size, cfg.optimizer.lr(), cfg.method::<agm_modulation::Agm>().alpha),
        (999, 64, 1e-4, 2.5)
    );
    assert_eq!(cfg.schedule, agm_train::optim::ScheduleConfig::Step { step_size: 70, gamma: 0.1 });
    assert_eq!(cfg.method::<agm_modulation::Agm>(), agm_modulation::AgmConfig::paper_avmnist());
    let epochs = resolved.settings.iter().find(|s| s.key == "epochs").unwrap();
    assert_eq!(epochs.to_string(), "epochs = 999 (avmnist default)");
    // AV-MNIST's OGM-GE settings differ from the embedded ones, but an AGM run does not use them.
    assert!(resolved.settings.iter().any(|s| s.key.starts_with("agm.")), "{:?}", resolved.settings);
    assert!(!resolved.settings.iter().any(|s| s.key.starts_with("ogm_ge.")), "{:?}", resolved.settings);
    for (dataset, alpha, epochs) in [("cremad", 1.5, 1500), ("urfunny", 4.0, 800), ("ave", 1.0, 10), ("mosei", 1.0, 10)]
    {
        let cfg = RunRequest::default()
            .set("--dataset", "dataset", dataset)
            .set("--data", "data", "x")
            .resolve()
            .unwrap()
            .config;
        assert_eq!(
            (cfg.method::<agm_modulation::Agm>().alpha, cfg.epochs, cfg.batch_size),
            (alpha, epochs, 16),
            "{dataset}"
        );
        // Every AGM setting, its `None`s included, through the resolver and a run's config.toml.
        let preset = <agm_modulation::Agm as agm_modulation::Method>::preset(dataset);
        let back = RunConfig::from_toml_str(&cfg.to_run_toml("test")).unwrap();
        assert_eq!(
            (cfg.method::<agm_modulation::Agm>(), back.method::<agm_modulation::Agm>()),
            (preset.clone(), preset)
        );
        // And every other setting of every method.
        for method in agm_modulation::registry::names() {
            let cfg = RunConfig { method: method.to_string(), ..cfg.clone() };
            let back = RunConfig::from_toml_str(&cfg.to_run_toml("test")).unwrap();
            assert!(back.same_run(&cfg), "{dataset} {method}:\n{}", cfg.to_run_toml(""));
        }
    }
    // The paper's recipes where the reference has no probability floor (UR-Funny) or no
    // clipping (AVE): resolved and read back from the run's config.toml, both stay off.
    for (recipe, floor, clip) in [("urfunny-agm-late", false, true), ("ave-agm", true, false)] {
        let cfg = RunRequest::default().recipe(recipe).set("--data", "data", "x").resolve().unwrap().config;
        let back = RunConfig::from_toml_str(&cfg.to_run_toml("test")).unwrap();
        for agm in [cfg.method::<agm_modulation::Agm>(), back.method::<agm_modulation::Agm>()] {
            assert_eq!((agm.prob_floor.is_some(), agm.clip.is_some()), (floor, clip), "{recipe}: {agm:?}");
        }
    }
    // Synthetic data with a paper model trains with that model's dataset settings.
    let synthetic = RunRequest::default()
        .set("--dataset", "dataset", "synthetic")
        .set("--model", "model", "avmnist-late")
        .resolve()
        .unwrap()
        .config;
    assert_eq!(
        (synthetic.optimizer.lr(), synthetic.method::<agm_modulation::Agm>().alpha, synthetic.epochs),
        (1e-4, 2.5, 20)
    );
    // MOSEI clips every run, joint included.
    let mosei = RunConfig::for_dataset("mosei").unwrap();
    assert!(mosei.method::<agm_modulation::Joint>().clip.is_some());
    // The embedded default is unchanged by the resolver.
    assert_eq!(RunRequest::default().resolve().unwrap().config, RunConfig::av_digits());
    assert!(RunRequest::default().resolve().unwrap().settings.is_empty());
}

/// A rejected name says where it came from and which known name was probably meant.
#[test]
fn an_unknown_name_is_blamed_on_the_flag_or_file_that_gave_it() {
    let err = |request: RunRequest| request.resolve().unwrap_err().to_string();
    let e = err(RunRequest::default().set("--method", "method", "agn"));
    assert!(e.contains("flag --method: method = `agn` is not known (did you mean `agm`?)"), "{e}");
    let e = err(RunRequest::default().set("--dataset", "dataset", "avmnst"));
    assert!(e.contains("flag --dataset: dataset = `avmnst` is not known (did you mean `avmnist`?)"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mine.toml");
    std::fs::write(&path, "model = \"avmnist-lat\"\ndataset = \"avmnist\"\n").unwrap();
    let e = err(RunRequest::default().config_file(&path).set("--data", "data", "x"));
    let expected =
        format!("config file {}: model = `avmnist-lat` is not known (did you mean `avmnist-late`?)", path.display());
    assert!(e.contains(&expected), "{e}");
}

/// Checks whose message names the setting further in (`optimizer.lr = …: must be …`) are blamed on
/// the flag or file too; names are recorded in one spelling.
#[test]
fn every_refused_value_names_its_flag_or_file_and_names_have_one_spelling() {
    let err = |request: RunRequest| request.resolve().unwrap_err().to_string();
    let e = err(RunRequest::default().set("--lr", "optimizer.lr", -0.1));
    assert!(e.contains("flag --lr: optimizer.lr = -0.1: must be"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mine.toml");
    std::fs::write(&path, "[agm.clip]\nthreshold = inf\nmax_norm = 1.0\ncondition = \"outside-band\"\n").unwrap();
    let e = err(RunRequest::default().config_file(&path));
    assert!(e.contains(&format!("config file {}: agm.clip.threshold must be finite", path.display())), "{e}");
    let resolved = RunRequest::default()
        .set("--method", "method", " agm + ogm-ge ")
        .set("--preset", "data_preset", " balanced")
        .resolve()
        .unwrap();
    assert_eq!((resolved.config.method.as_str(), resolved.config.data_preset.as_str()), ("agm+ogm-ge", "balanced"));
    let shown: Vec<String> = resolved.settings.iter().map(|s| s.to_string()).collect();
    assert!(shown.contains(&"method = \"agm+ogm-ge\" (flag --method)".to_string()), "{shown:?}");
}

#[test]
fn a_config_file_wins_over_a_recipe_and_a_flag_over_both() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mine.toml");
    std::fs::write(&path, "epochs = 3\n[agm]\nalpha = 0.5\n").unwrap();
    let resolved = RunRequest::default()
        .recipe("urfunny-agm-late")
        .config_file(&path)
        .set("--data", "data", "x")
        .set("--epochs", "epochs", 2)
        .resolve()
        .unwrap();
    assert_eq!((resolved.config.epochs, resolved.config.method::<agm_modulation::Agm>().alpha), (2, 0.5));
    assert_eq!(
        resolved.config.method::<agm_modulation::Agm>().coeff_clamp,
        Some(7.0),
        "the recipe's dataset settings stay"
    );
    let epochs = resolved.settings.iter().find(|s| s.key == "epochs").unwrap().to_string();
    assert!(
        epochs.starts_with("epochs = 2 (flag --epochs; wins over recipe urfunny-agm-late, config file"),
        "{epochs}"
    );
    // A key the config does not know, in the file: the error names the file.
    std::fs::write(&path, "[agm]\nalpah = 0.5\n").unwrap();
    let err = RunRequest::default().config_file(&path).resolve().unwrap_err().to_string();
    assert!(err.contains("mine.toml") && err.contains("alpah"), "{err}");
    // Changing the optimizer's kind drops the old kind's keys.
    std::fs::write(&path, "[optimizer]\nkind = \"adam\"\nlr = 0.001\n").unwrap();
    let cfg =
        RunRequest::default().recipe("ave-agm").config_file(&path).set("--data", "data", "x").resolve().unwrap().config;
    assert_eq!(cfg.optimizer.lr(), 0.001);
}

#[test]
fn the_shapley_mode_follows_the_encoders() {
    let device = Device::Cpu;
    let mode = |model: &str| {
        let cfg = RunConfig { dataset: "synthetic".into(), model: model.into(), ..RunConfig::av_digits() };
        let data = cfg.load_dataset().unwrap();
        let built = cfg.build_model(&data, &device).unwrap();
        (cfg.shapley_mode(built.as_ref()), cfg.describe_shapley(built.as_ref()))
    };
    // MLP encoders without batch norm or dropout: fast is exact.
    assert_eq!(mode("av-digits-late").0, ShapleyMode::Fast);
    // ResNet encoders have batch norm: auto runs the reference's passes.
    let (m, words) = mode("avmnist-late");
    assert_eq!(m, ShapleyMode::Faithful);
    assert!(words.contains("faithful (auto"), "{words}");
    let cfg = RunConfig {
        dataset: "synthetic".into(),
        model: "avmnist-late".into(),
        shapley: "fast".into(),
        ..RunConfig::av_digits()
    };
    let data = cfg.load_dataset().unwrap();
    let model = cfg.build_model(&data, &device).unwrap();
    assert_eq!(cfg.shapley_mode(model.as_ref()), ShapleyMode::Fast);
    assert!(cfg.describe_shapley(model.as_ref()).contains("approximation"));
    // The PSP net has no fast path: it always runs the reference's passes, whatever the mode.
    let (m, words) = mode("ave-psp");
    assert_eq!(m, ShapleyMode::Faithful);
    assert!(words.contains("always runs the reference's passes"), "{words}");
}

#[test]
fn two_epochs_of_the_avmnist_recipe_lower_the_training_loss_on_reference_shaped_data() {
    let dir = tempfile::tempdir().unwrap();
    // 44 rows leave no batch of 1 sample, which the ResNet's 1×1 batch norm refuses.
    agm_data::loaders::avmnist::write_random_folder(dir.path(), 44, 10, 0).unwrap();
    let cfg = RunRequest::default()
        .recipe("avmnist-agm-late")
        .set("--data", "data", dir.path().to_string_lossy().into_owned())
        .set("--epochs", "epochs", 2)
        .set("--batch-size", "batch_size", 8)
        .resolve()
        .unwrap()
        .config;
    let device = Device::Cpu;
    let built = cfg.build(&device).unwrap();
    let train = cfg.train_source(&built.data);
    let mut trainer = cfg.trainer(built.model.as_ref(), built.modulator, &built.data, &device).unwrap();
    let mut losses = Losses::default();
    let summary = trainer.fit(train.as_ref(), &built.data.validation, &mut losses).unwrap();
    assert_eq!(summary.epochs_done, 2);
    assert!(losses.0[1] < losses.0[0], "epoch losses {:?}", losses.0);
    // The reference's protocol reads the test split every epoch on AV-MNIST.
    assert!(summary.last.unwrap().reference_split.is_some());
}

#[derive(Default)]
struct Losses(Vec<f64>);

impl Callback for Losses {
    fn on_epoch_end(&mut self, e: &EpochSummary) -> Flow {
        self.0.push(e.train_loss);
        Flow::Continue
    }
}

#[test]
fn a_uni_modal_recipe_keeps_its_modality_and_builds_the_reference_classifier() {
    let dir = tempfile::tempdir().unwrap();
    agm_data::loaders::avmnist::write_random_folder(dir.path(), 20, 10, 0).unwrap();
    let cfg = RunRequest::default()
        .recipe("avmnist-uni-audio")
        .set("--data", "data", dir.path().to_string_lossy().into_owned())
        .resolve()
        .unwrap()
        .config;
    let data = cfg.load_dataset().unwrap();
    assert_eq!(data.modalities.names(), ["audio"]);
    let model = cfg.build_model(&data, &Device::Cpu).unwrap();
    // Audio_Classify_ResNet: a one-channel ResNet-18 (11,170,240) and Linear(512, 10).
    let params: usize = model.param_groups().trainable().iter().map(|v| v.var.elem_count()).sum();
    assert_eq!(params, 11_170_240 + 5_130);
    // AGM needs two modalities or more: a clear error, not a panic.
    let agm = RunConfig { method: "agm".into(), ..cfg };
    assert!(agm.build_modulator(model.as_ref(), &data).is_err());
}
