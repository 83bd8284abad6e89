//! Generated bad input for the run layer: every config field with a value of the wrong type or
//! an unknown key beside it, and damaged checkpoints. Each must give an error that names the
//! file and the field, never a panic.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use agm_train::{RunConfig, RunDir, RunRequest};
use candle_core::Device;

mod common;

/// Every leaf of a TOML table as `(dotted key, value)`.
fn leaves(table: &toml::Table, prefix: &str, out: &mut Vec<(String, toml::Value)>) {
    for (k, v) in table {
        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match v {
            toml::Value::Table(t) => leaves(t, &key, out),
            other => out.push((key, other.clone())),
        }
    }
}

/// A TOML document that sets dotted `key` to `value`.
fn document(key: &str, value: toml::Value) -> String {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().expect("a key");
    let mut table = toml::Table::from_iter([(last.to_string(), value)]);
    for part in parts.iter().rev() {
        table = toml::Table::from_iter([(part.to_string(), toml::Value::Table(table))]);
    }
    toml::to_string(&table).unwrap()
}

/// A value of another type than `v`.
fn wrong_type(v: &toml::Value) -> toml::Value {
    match v {
        // An optional setting that is off (`"none"`) takes numbers or tables.
        toml::Value::String(s) if s == agm_core::serde_none::NONE => toml::Value::Boolean(true),
        toml::Value::String(_) => toml::Value::Integer(7),
        toml::Value::Array(_) => toml::Value::Boolean(true),
        _ => toml::Value::String("fast".into()),
    }
}

fn resolve_file(path: &Path) -> String {
    match catch_unwind(AssertUnwindSafe(|| RunRequest::default().config_file(path).resolve())) {
        Ok(Ok(r)) => panic!("{} was accepted: {:?}", std::fs::read_to_string(path).unwrap(), r.config),
        Ok(Err(e)) => e.to_string(),
        Err(_) => panic!("resolving {} panicked", std::fs::read_to_string(path).unwrap()),
    }
}

#[test]
fn every_config_field_with_a_wrong_type_or_an_unknown_key_beside_it_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let mut all = Vec::new();
    leaves(&toml::Table::try_from(RunConfig::av_digits()).unwrap(), "", &mut all);
    assert!(all.len() > 30, "{} fields", all.len());
    let mut sections = std::collections::BTreeSet::new();
    for (key, value) in &all {
        let text = document(key, wrong_type(value));
        std::fs::write(&path, &text).unwrap();
        let err = resolve_file(&path);
        assert!(err.contains("bad.toml") && err.contains(&format!("`{key}`")), "{key}: {err}\n{text}");
        assert!(err.contains("line "), "{key}: no line in {err}");
        sections.insert(key.rsplit_once('.').map_or(String::new(), |(s, _)| s.to_string()));
    }
    let n_sections = sections.len();
    for section in sections {
        let key = if section.is_empty() { "bogus_key".to_string() } else { format!("{section}.bogus_key") };
        std::fs::write(&path, document(&key, toml::Value::Integer(1))).unwrap();
        let err = resolve_file(&path);
        assert!(err.contains("unknown field `bogus_key`") && err.contains(&format!("`{key}`")), "{key}: {err}");
    }
    // A misspelt top-level key names the setting it was probably meant to be.
    for (typo, meant) in
        [("epoch", "`epochs`"), ("learning_rat", "`lr` in [optimizer]"), ("agmm", "`agm`"), ("sede", "`seed`")]
    {
        std::fs::write(&path, format!("{typo} = 1\n")).unwrap();
        let err = resolve_file(&path);
        assert!(err.contains(&format!("(did you mean {meant}?)")), "{typo}: {err}");
    }
    // A misspelt section is found at its header.
    std::fs::write(&path, "epochs = 2\n\n[msess]\npatience = 2\n").unwrap();
    let err = resolve_file(&path);
    assert!(err.contains("line 3, `msess`: unknown field `msess`") && err.contains("mses"), "{err}");
    // Inside a section too, a misspelt key names the key it was probably meant to be.
    for (text, meant) in [("[optimizer]\nlearning_rate = 0.1\n", "`lr`"), ("[agm]\nalpah = 1.0\n", "`alpha`")] {
        std::fs::write(&path, text).unwrap();
        let err = resolve_file(&path);
        assert!(err.contains(&format!("(did you mean {meant}?)")) && err.matches("did you mean").count() == 1, "{err}");
    }
    // Types in words, not Rust's names; a missing file is named as the config file.
    std::fs::write(&path, "epochs = \"two\"\n[optimizer]\nlr = \"fast\"\n").unwrap();
    let err = resolve_file(&path);
    assert!(err.contains("expected a whole number (0 or more)") && !err.contains("usize"), "{err}");
    std::fs::write(&path, "[optimizer]\nlr = \"fast\"\n").unwrap();
    let err = resolve_file(&path);
    assert!(err.contains("expected a number") && !err.contains("f64"), "{err}");
    let err = resolve_file(&dir.path().join("absent.toml"));
    assert!(err.starts_with("config file ") && err.contains("absent.toml"), "{err}");
    eprintln!("{} fields of the wrong type and {n_sections} unknown keys, each named with its line", all.len());
}

/// Resumes the default run from `dir`'s checkpoint; the error text, or `None` if it resumed.
fn resume(cfg: &RunConfig, dir: &Path) -> Option<String> {
    let device = Device::Cpu;
    let built = cfg.build(&device).unwrap();
    let mut trainer = cfg
        .trainer(built.model.as_ref(), built.modulator, &built.data, &device)
        .unwrap()
        .with_run_dir(RunDir::open(dir).unwrap());
    match catch_unwind(AssertUnwindSafe(|| trainer.resume())) {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => panic!("resuming from a damaged checkpoint panicked"),
    }
}

/// A change to a checkpoint's tensors and metadata.
type Edit = dyn Fn(&mut Vec<(String, candle_core::Tensor)>, &mut std::collections::HashMap<String, String>);

#[test]
fn damaged_checkpoints_are_named_and_refused() {
    let cfg = RunConfig { epochs: 1, ..RunConfig::av_digits() };
    let dir = tempfile::tempdir().unwrap();
    {
        let device = Device::Cpu;
        let built = cfg.build(&device).unwrap();
        let (train, validation) = (cfg.train_source(&built.data), &built.data.validation);
        let mut trainer = cfg
            .trainer(built.model.as_ref(), built.modulator, &built.data, &device)
            .unwrap()
            .with_run_dir(RunDir::create(dir.path()).unwrap());
        trainer.fit(train.as_ref(), validation, &mut common::StopAt(2)).unwrap();
    }
    let path = dir.path().join("checkpoint.safetensors");
    let good = std::fs::read(&path).unwrap();
    assert_eq!(resume(&cfg, dir.path()), None, "the undamaged checkpoint resumes");
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        ("empty".into(), Vec::new()),
        ("garbage".into(), b"not a checkpoint at all".to_vec()),
        ("header length past the end".into(), [&u64::MAX.to_le_bytes()[..], &good[8..]].concat()),
    ];
    for cut in [4, 8, 8 + header_len / 2, 8 + header_len, good.len() / 2, good.len() - 1] {
        cases.push((format!("cut at byte {cut}"), good[..cut].to_vec()));
    }
    for at in [9, 8 + header_len / 3, 8 + header_len - 2] {
        let mut bytes = good.clone();
        bytes[at] ^= 0x5a;
        cases.push((format!("header byte {at} flipped"), bytes));
    }
    // One bit of a tensor's data, or of the header's text: only the checksum can tell.
    for (at, what) in [(good.len() - 3, "data"), (8 + header_len / 2, "header text")] {
        let mut bytes = good.clone();
        bytes[at] ^= 0x01;
        cases.push((format!("one bit of the {what} flipped"), bytes));
    }
    let (_, header) = safetensors::SafeTensors::read_metadata(&good).unwrap();
    let meta = header.metadata().clone().unwrap_or_default();
    assert!(meta["checksum"].starts_with("crc32:"), "{meta:?}");
    // Valid safetensors with the wrong contents: a missing, an extra and a misshapen tensor, and
    // broken trainer state, each written as a file of the version before checksums, which loads
    // without one, so that the check of its own kind refuses it.
    let tensors = candle_core::safetensors::load_buffer(&good, &Device::Cpu).unwrap();
    let serialize = |named: &[(String, candle_core::Tensor)], meta: &std::collections::HashMap<String, String>| {
        safetensors::serialize(named.iter().map(|(k, v)| (k.as_str(), v)), Some(meta.clone())).unwrap()
    };
    let mut named: Vec<(String, candle_core::Tensor)> = tensors.clone().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let mut v1 = meta.clone();
    v1.remove("checksum");
    v1.insert("format".into(), "agm-checkpoint-v1".into());
    std::fs::write(&path, serialize(&named, &v1)).unwrap();
    assert_eq!(resume(&cfg, dir.path()), None, "an undamaged checkpoint of the version before checksums resumes");
    let mut unsummed = meta.clone();
    unsummed.remove("checksum");
    cases.push(("a checksum missing".into(), serialize(&named, &unsummed)));
    let rewrite = |edit: &Edit| {
        let (mut named, mut meta) = (named.clone(), v1.clone());
        edit(&mut named, &mut meta);
        serialize(&named, &meta)
    };
    cases
        .push(("a model tensor missing".into(), rewrite(&|named, _| named.retain(|(k, _)| k != "model/head.fc.bias"))));
    cases.push((
        "an unknown model tensor".into(),
        rewrite(&|named, _| {
            named.push((
                "model/extra.weight".into(),
                candle_core::Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap(),
            ))
        }),
    ));
    cases.push((
        "a misshapen model tensor".into(),
        rewrite(&|named, _| {
            let slot = named.iter_mut().find(|(k, _)| k == "model/head.fc.bias").unwrap();
            slot.1 = candle_core::Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap();
        }),
    ));
    cases.push((
        "broken trainer state".into(),
        rewrite(&|_, meta| {
            meta.insert("trainer".into(), "{\"epochs_done\": \"many\"".into());
        }),
    ));
    cases.push((
        "no format tag".into(),
        rewrite(&|_, meta| {
            meta.remove("format");
        }),
    ));
    for (name, bytes) in &cases {
        std::fs::write(&path, bytes).unwrap();
        let err = resume(&cfg, dir.path()).unwrap_or_else(|| panic!("{name}: accepted"));
        assert!(err.contains("checkpoint.safetensors"), "{name}: the error does not name the file: {err}");
        if name == "one bit of the data flipped" {
            assert!(err.contains("changed after it was written") && err.contains("restore it"), "{err}");
        }
    }
    // Read as weights (`eval`, `--init-weights`), a flipped bit is refused too.
    let (_, flipped) = cases.iter().find(|(name, _)| name == "one bit of the data flipped").unwrap();
    let weights = dir.path().join("weights.safetensors");
    std::fs::write(&weights, flipped).unwrap();
    let err = agm_train::read_state_dict(&weights).unwrap_err().to_string();
    assert!(err.contains("weights.safetensors") && err.contains("changed after it was written"), "{err}");
    std::fs::write(&weights, &good).unwrap();
    assert!(agm_train::read_state_dict(&weights).is_ok());
    eprintln!("{} damaged checkpoints, each refused with the file named", cases.len());
}

/// Every file under `dir` with its length and a hash of its bytes.
fn contents(dir: &Path) -> std::collections::BTreeMap<std::path::PathBuf, (usize, u64)> {
    use std::hash::{Hash, Hasher};
    let mut out = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(contents(&path));
        } else {
            let bytes = std::fs::read(&path).unwrap();
            let mut h = std::collections::hash_map::DefaultHasher::new();
            bytes.hash(&mut h);
            out.insert(path.clone(), (bytes.len(), h.finish()));
        }
    }
    out
}

#[test]
fn failed_starts_leave_nothing_and_failed_resumes_leave_the_run_as_it_was() {
    use agm_train::run::{train_run, Concepts, RunOptions, RunStart};
    let tmp = tempfile::tempdir().unwrap();
    let opts = RunOptions { concepts: Some(Concepts::Off), ..RunOptions::default() };
    let run = |cfg: &RunConfig, dir: &RunDir, start: RunStart| {
        train_run(cfg, dir, start, &opts, &mut agm_train::NoCallback).map_err(|e| e.to_string())
    };
    let cfg = RunConfig { epochs: 2, ..RunConfig::av_digits() };

    // A new run that diverges in its first epoch: its directory goes; a directory that held
    // something else keeps that and only that.
    let sgd = agm_train::optim::SgdConfig::agm_reference(1e6);
    let diverging = RunConfig { optimizer: agm_train::optim::OptimizerConfig::Sgd(sgd), ..cfg.clone() };
    let fresh = RunDir::create(tmp.path().join("fresh")).unwrap();
    let err = run(&diverging, &fresh, RunStart::New).unwrap_err();
    assert!(err.contains("became NaN at epoch 1") && err.contains("start again with a lower learning rate"), "{err}");
    assert!(!fresh.root().exists(), "{err}");
    // Nothing of it was kept, so nothing names the directory or offers a resume.
    assert!(err.contains("nothing to resume") && !err.contains("fresh") && !err.contains("--resume"), "{err}");
    let shared = RunDir::create(tmp.path().join("shared")).unwrap();
    std::fs::write(shared.root().join("notes.txt"), "mine").unwrap();
    run(&diverging, &shared, RunStart::New).unwrap_err();
    assert_eq!(contents(shared.root()).into_keys().collect::<Vec<_>>(), [shared.root().join("notes.txt")]);

    // A finished run, then resumes that must fail and change nothing.
    let dir = RunDir::create(tmp.path().join("run")).unwrap();
    run(&cfg, &dir, RunStart::New).unwrap();
    let before = contents(dir.root());
    let changed = Some("A header that must not be written.".to_string());
    let resume = |cfg: &RunConfig| run(cfg, &dir, RunStart::Resume { header: changed.clone() }).unwrap_err();
    let err = resume(&RunConfig { epochs: 1, ..cfg.clone() });
    assert!(err.contains("2 epochs done") && err.contains("--epochs 2 or more"), "{err}");
    assert_eq!(contents(dir.root()), before, "fewer epochs");
    let checkpoint = dir.checkpoint();
    let good = std::fs::read(&checkpoint).unwrap();
    std::fs::write(&checkpoint, &good[..good.len() / 2]).unwrap();
    let err = resume(&RunConfig { epochs: 4, ..cfg.clone() });
    assert!(err.contains("checkpoint.safetensors"), "{err}");
    std::fs::write(&checkpoint, &good).unwrap();
    assert_eq!(contents(dir.root()), before, "a damaged checkpoint");
    // Without its checkpoint a run with finished epochs cannot continue exactly.
    std::fs::remove_file(&checkpoint).unwrap();
    let err = resume(&RunConfig { epochs: 4, ..cfg.clone() });
    assert!(err.contains("checkpoint.safetensors") && err.contains("missing"), "{err}");
    std::fs::write(&checkpoint, &good).unwrap();
    assert_eq!(contents(dir.root()), before, "a missing checkpoint");
    // Settings changed since the checkpoint (a hand-edited config.toml) are named; more epochs
    // and another device are what a resume may change.
    let sgd = agm_train::optim::SgdConfig::agm_reference(0.05);
    let edited = RunConfig {
        epochs: 4,
        data_preset: "balanced".into(),
        optimizer: agm_train::optim::OptimizerConfig::Sgd(sgd),
        ..cfg.clone()
    };
    let err = resume(&edited);
    assert!(
        err.contains("optimizer.lr = 0.05 (the checkpoint's: 0.01)")
            && err.contains("data_preset = \"balanced\" (the checkpoint's: \"noisy-audio\")")
            && err.contains("config.toml"),
        "{err}"
    );
    assert_eq!(contents(dir.root()), before, "changed settings");
    // Best weights that are gone or damaged are refused before any epoch trains: the run ends
    // by evaluating them, and no later epoch can rebuild them.
    let best = dir.best();
    let good_best = std::fs::read(&best).unwrap();
    for (damage, bytes) in [("missing", None), ("cut", Some(&good_best[..good_best.len() / 2]))] {
        match bytes {
            None => std::fs::remove_file(&best).unwrap(),
            Some(bytes) => std::fs::write(&best, bytes).unwrap(),
        }
        let err = resume(&RunConfig { epochs: 4, ..cfg.clone() });
        assert!(
            err.contains("best.safetensors")
                && err.contains("best weights (epoch ")
                && err.contains("restore the file"),
            "{damage}: {err}"
        );
        std::fs::write(&best, &good_best).unwrap();
        assert_eq!(contents(dir.root()), before, "best weights {damage}");
    }
    // Finished epochs' metrics rows a resume would lose: a damaged line, or the whole file.
    let metrics = dir.metrics();
    let good_metrics = std::fs::read(&metrics).unwrap();
    let garbled =
        [&b"{garbled\n"[..], &good_metrics[good_metrics.iter().position(|&b| b == b'\n').unwrap() + 1..]].concat();
    std::fs::write(&metrics, &garbled).unwrap();
    let err = resume(&RunConfig { epochs: 4, ..cfg.clone() });
    assert!(err.contains("metrics.jsonl: line 1 is not a metrics row") && err.contains("remove that line"), "{err}");
    assert_eq!(std::fs::read(&metrics).unwrap(), garbled, "the damaged file is kept as it was");
    std::fs::remove_file(&metrics).unwrap();
    let err = resume(&RunConfig { epochs: 4, ..cfg.clone() });
    assert!(err.contains("metrics.jsonl: missing") && err.contains("create it empty"), "{err}");
    std::fs::write(&metrics, &good_metrics).unwrap();
    assert_eq!(contents(dir.root()), before, "damaged metrics");
    // And the run still resumes.
    let outcome = run(&RunConfig { epochs: 3, ..cfg }, &dir, RunStart::Resume { header: changed.clone() }).unwrap();
    assert_eq!(outcome.run.epochs_done, 3);
}

/// A last batch of 1 sample reaching a batch norm over a 1×1 map (AV-MNIST's ResNet layer4) is
/// refused at that step, as PyTorch refuses it, naming the epoch, the step and the fix; it
/// trained silently into running variances near 0.
#[test]
fn a_batch_of_one_sample_at_a_one_by_one_batch_norm_is_refused_naming_the_step() {
    use agm_train::run::{train_run, Concepts, RunOptions, RunStart};
    let cfg = RunRequest::default()
        .set("(test)", "dataset", "synthetic")
        .set("(test)", "model", "avmnist-late")
        .set("(test)", "method", "joint")
        .set("(test)", "epochs", 1)
        .set("(test)", "batch_size", 127)
        .resolve()
        .unwrap()
        .config;
    let tmp = tempfile::tempdir().unwrap();
    let dir = RunDir::create(tmp.path().join("run")).unwrap();
    let opts = RunOptions { concepts: Some(Concepts::Off), ..RunOptions::default() };
    let err = train_run(&cfg, &dir, RunStart::New, &opts, &mut agm_train::NoCallback).unwrap_err().to_string();
    assert!(err.contains("epoch 1, step 2 (a batch of 1 sample)") && err.contains("choose a batch size"), "{err}");
    assert!(!err.contains("stack backtrace") && !err.contains("\n"), "{err}");
}

/// A study's or a reproduction's folder where a run directory goes says what it is and names a
/// run inside; another folder without `config.toml` asks whether it is a run directory.
#[test]
fn a_study_folder_given_as_a_run_directory_names_a_run_inside() {
    let tmp = tempfile::tempdir().unwrap();
    for (file, kind) in [("study.json", "study"), ("reproduce.json", "reproduction")] {
        let folder = tmp.path().join(kind);
        std::fs::create_dir_all(folder.join("agm-seed0")).unwrap();
        std::fs::write(folder.join("agm-seed0/config.toml"), "").unwrap();
        std::fs::write(folder.join(file), "{}").unwrap();
        let err = RunDir::open(&folder).unwrap().read_config().unwrap_err().to_string();
        let run = folder.join("agm-seed0");
        assert!(err.contains(&format!("is a {kind} folder")) && err.contains(&run.display().to_string()), "{err}");
    }
    let err = RunDir::open(tmp.path()).unwrap().read_config().unwrap_err().to_string();
    assert!(err.contains("config.toml not found") && err.contains("a run directory"), "{err}");
}
