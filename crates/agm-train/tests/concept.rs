//! Mono-modal concepts on AV-Digits, the per-epoch competition probe, bad concept folders, and
//! the golden `competition` case through the parity runner.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use agm_core::ModalitySet;
use agm_data::av_digits::Split;
use agm_train::concept::{
    check_concept_folder, default_dir, train_concept, train_concepts, ConceptManifest, ConceptProbe, ConceptSet,
    CONCEPT_FORMAT,
};
use agm_train::optim::{OptimizerConfig, SgdConfig};
use agm_train::run::{train_run, Concepts, RunOptions, RunStart};
use agm_train::{Callback, EpochSummary, Flow, NoCallback, RunConfig, RunDir, TrainError, Trainer};
use candle_core::{DType, Device, Tensor};

mod common;

/// The clean preset at its learning rate: two epochs of a uni-modal MLP learn well there.
fn quick_cfg(epochs: usize) -> RunConfig {
    RunConfig {
        epochs,
        method: "joint".into(),
        data_preset: "audio-dominant".into(),
        optimizer: OptimizerConfig::Sgd(SgdConfig::agm_reference(0.05)),
        ..RunConfig::av_digits()
    }
}

struct Rows(Vec<EpochSummary>);
impl Callback for Rows {
    fn on_epoch_end(&mut self, e: &EpochSummary) -> Flow {
        self.0.push(e.clone());
        Flow::Continue
    }
}

#[test]
fn a_concept_run_writes_files_that_load_back_and_feed_the_probe() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("concepts");
    let cfg = quick_cfg(2);
    let set = train_concepts(&cfg, None, &out).unwrap();
    assert_eq!(set.modalities(), ["audio", "visual"]);
    for m in ["audio", "visual"] {
        assert!(out.join(format!("{m}.safetensors")).is_file() && out.join(format!("{m}.json")).is_file());
    }
    assert!(!out.join(".audio-run").exists(), "the scratch run directory is removed");

    let loaded = ConceptSet::load(&out).unwrap().expect("concepts exist");
    assert_eq!(loaded.modalities(), ["audio", "visual"]);
    let data = cfg.load_av_digits().unwrap();
    for c in loaded.concepts() {
        let m = c.manifest();
        assert_eq!(
            (m.format.as_str(), m.dataset.as_str(), m.preset.as_str()),
            (CONCEPT_FORMAT, "av-digits", "audio-dominant")
        );
        assert_eq!((m.seed, m.epochs, m.dim), (0, 2, 10));
        assert!((1..=2).contains(&m.best_epoch), "{m:?}");
        // Two epochs of a uni-modal MLP on clean digits learn well beyond chance (10%).
        assert!(m.validation_accuracy > 0.5 && m.test_accuracy > 0.5, "{m:?}");
        for split in [Split::Dep, Split::Validation, Split::Test] {
            let t = c.split(split).unwrap();
            assert_eq!(t.dims(), [data.split(split).len(), 10], "{} {split}", c.modality());
            assert_eq!(t.dtype(), DType::F32);
        }
        // The saved logits are the uni-modal model's: its argmax scores the manifest's accuracy.
        let labels = data.split(Split::Validation).labels();
        let acc = agm_metric::count_correct(c.split(Split::Validation).unwrap(), labels).unwrap() as f64
            / labels.len() as f64;
        assert!((acc - m.validation_accuracy).abs() < 1e-12, "{acc} vs {m:?}");
    }
    // Identical to what was returned.
    assert_eq!(
        loaded.get("audio").unwrap().split(Split::Dep).unwrap().to_vec2::<f32>().unwrap(),
        set.get("audio").unwrap().split(Split::Dep).unwrap().to_vec2::<f32>().unwrap()
    );
    assert!(ConceptSet::load_for(&cfg, &out).unwrap().is_some());

    // The probe inside a (multimodal, joint) training run: one strength per modality per epoch,
    // in metrics.jsonl too.
    let device = Device::Cpu;
    let model = cfg.build_model(&cfg.load_dataset().unwrap(), &device).unwrap();
    let modulator = cfg.build_modulator(model.as_ref(), &cfg.load_dataset().unwrap()).unwrap();
    let (train, validation) = (data.split(Split::Train), data.split(Split::Validation));
    let probe = ConceptProbe::new(&loaded, data.modalities(), data.split(Split::Dep), validation).unwrap();
    let log = probe.log();
    let run = RunDir::create(tmp.path().join("run")).unwrap();
    let mut trainer = Trainer::new(
        model.as_ref(),
        modulator,
        |g| Ok(cfg.optimizer.build(g)?),
        quick_cfg(1).trainer_options(),
        &device,
    )
    .unwrap()
    .with_run_dir(run.clone())
    .with_competition(Box::new(probe));
    let mut rows = Rows(Vec::new());
    trainer.fit(train, validation, &mut rows).unwrap();
    let competition = rows.0[0].competition.clone().expect("the probe ran");
    assert_eq!(competition.len(), 2);
    for r in &competition {
        assert!(r.is_finite() && *r > 0.0 && *r < 2.0, "{competition:?}");
    }
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].iter().map(|s| s.modality.as_str()).collect::<Vec<_>>(), ["audio", "visual"]);
    for (s, r) in log[0].iter().zip(&competition) {
        assert_eq!(s.r_official, *r);
        assert!((s.r_official - s.r_float64).abs() < 1e-4 * s.r_float64.max(1e-3), "{s:?}");
        assert_eq!((s.fit_samples, s.eval_samples, s.feature_dim, s.concept_dim), (300, 300, 256, 10));
    }
    let metrics: Vec<EpochSummary> = run.read_metrics().unwrap();
    assert_eq!(metrics[0].competition.as_deref(), Some(competition.as_slice()));
}

#[test]
fn a_stopped_concept_training_writes_nothing_and_a_killed_ones_leftovers_are_ignored_then_cleared() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("concepts");
    let err = train_concept(&quick_cfg(2), "audio", &out, &mut common::StopAt(3)).unwrap_err();
    assert!(matches!(err, TrainError::Interrupted(_)), "{err}");
    assert!(err.to_string().contains("`audio` concept") && err.to_string().contains("nothing of it was written"));
    let left: Vec<_> = std::fs::read_dir(&out).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "neither the concept nor its scratch run stays: {left:?}");

    // What `kill -9` leaves: the scratch run with a temporary inside, and a temporary beside.
    std::fs::create_dir_all(out.join(".audio-run")).unwrap();
    std::fs::write(out.join(".audio-run/checkpoint.safetensors.4242.0.tmp"), "partial").unwrap();
    std::fs::write(out.join("audio.safetensors.4242.1.tmp"), "partial").unwrap();
    assert!(ConceptSet::load(&out).unwrap().is_none(), "leftovers are no concepts");
    check_concept_folder(&out).unwrap();
    train_concept(&quick_cfg(1), "audio", &out, &mut NoCallback).unwrap();
    assert_eq!(ConceptSet::load(&out).unwrap().unwrap().modalities(), ["audio"]);
    assert!(!out.join(".audio-run").exists(), "the next training clears the scratch run");
}

#[test]
fn a_run_stopped_while_it_trains_its_concepts_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (run, concepts) = (tmp.path().join("run"), tmp.path().join("concepts"));
    let opts = RunOptions { concepts: Some(Concepts::TrainMissing(concepts.clone())), ..RunOptions::default() };
    let err = train_run(&quick_cfg(1), &RunDir::create(&run).unwrap(), RunStart::New, &opts, &mut common::StopAt(2))
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(err, TrainError::Interrupted(_)), "{err}");
    assert!(!run.exists(), "the run never started: its directory is removed");
    assert!(ConceptSet::load(&concepts).unwrap().is_none());
    assert!(std::fs::read_dir(&concepts).unwrap().next().is_none(), "no scratch run stays");
}

#[test]
fn a_run_records_the_concepts_it_was_given_for_its_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let concepts = tmp.path().join("elsewhere");
    // As `study` passes them: in the options, not in the config.
    let opts = RunOptions { concepts: Some(Concepts::In(concepts.clone())), ..RunOptions::default() };
    let dir = RunDir::create(tmp.path().join("run")).unwrap();
    train_run(&quick_cfg(1), &dir, RunStart::New, &opts, &mut NoCallback).unwrap();
    let recorded = dir.read_config().unwrap();
    assert_eq!(Concepts::default_for(&recorded), Concepts::In(concepts));
    // The default folder is recorded as empty: it follows the dataset and preset.
    let cfg = quick_cfg(1);
    let default = Concepts::TrainMissing(default_dir(&cfg.dataset, &cfg.data_preset)).recorded_in(&cfg);
    assert_eq!((default.concepts.as_str(), default.train_concepts), ("", true));
}

#[test]
fn a_run_directory_or_other_files_are_no_concepts_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("config.toml"), RunConfig::av_digits().to_toml()).unwrap();
    std::fs::write(run.join("summary.json"), "{}").unwrap();
    let err = train_concept(&quick_cfg(1), "audio", &run, &mut NoCallback).unwrap_err().to_string();
    assert!(err.contains(&format!("{} is a run directory", run.display())), "{err}");
    assert!(!run.join("audio.safetensors").exists() && !run.join(".audio-run").exists(), "refused before training");
    let other = tmp.path().join("other");
    std::fs::create_dir_all(other.join("data")).unwrap();
    std::fs::write(other.join("notes.txt"), "mine").unwrap();
    let err = check_concept_folder(&other).unwrap_err().to_string();
    assert!(err.contains("holds files that are not concepts (data, notes.txt)"), "{err}");
    assert!(check_concept_folder(&tmp.path().join("absent")).is_ok());
    // A file where the folder, or a folder above it, would go.
    let file = other.join("notes.txt");
    let err = check_concept_folder(&file).unwrap_err().to_string();
    assert!(err.contains("a file, not a folder, has this name; choose another concepts folder"), "{err}");
    let err = check_concept_folder(&file.join("concepts")).unwrap_err().to_string();
    assert!(err.contains(&format!("{} is a file", file.display())), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Hand-made concept folders (no training)

fn manifest(modality: &str, rows: [usize; 3]) -> ConceptManifest {
    ConceptManifest {
        format: CONCEPT_FORMAT.into(),
        dataset: "av-digits".into(),
        preset: "audio-dominant".into(),
        model: "av-digits-late".into(),
        modality: modality.into(),
        seed: 0,
        epochs: 1,
        best_epoch: 1,
        dim: 10,
        rows: ["dep", "validation", "test"].iter().map(|s| s.to_string()).zip(rows).collect::<BTreeMap<_, _>>(),
        validation_accuracy: 0.5,
        test_accuracy: 0.5,
        tensors: format!("{modality}.safetensors"),
    }
}

/// Writes `<modality>.json` saying `manifest_rows` and a tensors file holding `file_rows`.
fn write_concept(dir: &Path, modality: &str, manifest_rows: [usize; 3], file_rows: [usize; 3]) {
    std::fs::create_dir_all(dir).unwrap();
    let m = manifest(modality, manifest_rows);
    std::fs::write(dir.join(format!("{modality}.json")), serde_json::to_string_pretty(&m).unwrap()).unwrap();
    let tensors: HashMap<String, Tensor> = ["dep", "validation", "test"]
        .iter()
        .zip(file_rows)
        .map(|(s, n)| (s.to_string(), Tensor::randn(0f32, 1.0, (n, 10), &Device::Cpu).unwrap()))
        .collect();
    candle_core::safetensors::save(&tensors, dir.join(format!("{modality}.safetensors"))).unwrap();
}

const ROWS: [usize; 3] = [300, 300, 600];

#[test]
fn no_folder_or_no_manifest_means_no_concepts() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(ConceptSet::load(&tmp.path().join("absent")).unwrap().is_none());
    std::fs::write(tmp.path().join("notes.txt"), "x").unwrap();
    assert!(ConceptSet::load(tmp.path()).unwrap().is_none());
}

#[test]
fn a_missing_concept_file_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    write_concept(tmp.path(), "audio", ROWS, ROWS);
    write_concept(tmp.path(), "visual", ROWS, ROWS);
    let set = ConceptSet::load(tmp.path()).unwrap().unwrap();
    assert!(set.covers(&ModalitySet::new(["audio", "visual"])));
    std::fs::remove_file(tmp.path().join("visual.safetensors")).unwrap();
    let err = ConceptSet::load(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("visual.safetensors") && err.contains("cargo xtask concept"), "{err}");
}

#[test]
fn a_wrong_row_count_is_an_error_naming_the_file() {
    // The file disagrees with its manifest.
    let tmp = tempfile::tempdir().unwrap();
    write_concept(tmp.path(), "audio", ROWS, [299, 300, 600]);
    let err = ConceptSet::load(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("audio.safetensors") && err.contains("299") && err.contains("dep"), "{err}");

    // File and manifest agree, but not with the data split the probe measures on.
    let tmp = tempfile::tempdir().unwrap();
    write_concept(tmp.path(), "audio", ROWS, ROWS);
    write_concept(tmp.path(), "visual", [300, 250, 600], [300, 250, 600]);
    let set = ConceptSet::load(tmp.path()).unwrap().unwrap();
    let data = quick_cfg(1).load_av_digits().unwrap();
    let err = ConceptProbe::new(&set, data.modalities(), data.split(Split::Dep), data.split(Split::Validation))
        .err()
        .expect("row mismatch")
        .to_string();
    assert!(err.contains("visual.safetensors") && err.contains("250") && err.contains("300"), "{err}");

    // A concept missing for one modality: the probe says how to create it.
    let tmp = tempfile::tempdir().unwrap();
    write_concept(tmp.path(), "audio", ROWS, ROWS);
    let set = ConceptSet::load(tmp.path()).unwrap().unwrap();
    assert_eq!(set.missing(data.modalities()), ["visual"]);
    let err = ConceptProbe::new(&set, data.modalities(), data.split(Split::Dep), data.split(Split::Validation))
        .err()
        .expect("visual missing")
        .to_string();
    assert!(err.contains("cargo xtask concept --modality visual"), "{err}");
}

#[test]
fn a_corrupt_manifest_or_another_preset_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    write_concept(tmp.path(), "audio", ROWS, ROWS);
    let cfg = quick_cfg(1);
    let other = RunConfig { data_preset: "balanced".into(), ..cfg.clone() };
    let err = ConceptSet::load_for(&other, tmp.path()).unwrap_err().to_string();
    assert!(err.contains("audio.json") && err.contains("balanced"), "{err}");
    std::fs::write(tmp.path().join("audio.json"), "{ not json").unwrap();
    let err = ConceptSet::load(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("audio.json") && err.contains("cargo xtask concept"), "{err}");
    // A truncated tensors file: named, with the same fix.
    write_concept(tmp.path(), "audio", ROWS, ROWS);
    let tensors = tmp.path().join("audio.safetensors");
    let bytes = std::fs::read(&tensors).unwrap();
    std::fs::write(&tensors, &bytes[..bytes.len() / 2]).unwrap();
    let err = ConceptSet::load(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("audio.safetensors") && err.contains("cargo xtask concept"), "{err}");
}

#[test]
fn a_concept_file_changed_after_it_was_written_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    train_concepts(&quick_cfg(1), Some("visual"), tmp.path()).unwrap();
    let tensors = tmp.path().join("visual.safetensors");
    let mut bytes = std::fs::read(&tensors).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&tensors, &bytes).unwrap();
    let err = ConceptSet::load(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("visual.safetensors") && err.contains("changed after it was written"), "{err}");
}

#[test]
fn unknown_modalities_and_the_default_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let err = train_concept(&quick_cfg(1), "text", tmp.path(), &mut NoCallback).unwrap_err().to_string();
    assert!(err.contains("`text`") && err.contains("audio, visual"), "{err}");
    assert_eq!(default_dir("av-digits", "balanced"), PathBuf::from("concepts").join("av-digits-balanced"));
}

#[test]
fn every_av_digits_fusion_trains_its_missing_concepts() {
    // The concept is the dataset's: the uni-modal model of the encoder all `av-digits-*` share.
    for model in ["av-digits-early", "av-digits-film"] {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = RunConfig { model: model.into(), ..quick_cfg(1) };
        let set = train_concepts(&cfg, Some("visual"), tmp.path()).unwrap_or_else(|e| panic!("{model}: {e}"));
        assert_eq!(set.modalities(), ["visual"], "{model}");
    }
}

// ---------------------------------------------------------------------------------------------
// Parity

#[test]
#[allow(clippy::print_stdout)] // the report, shown with --nocapture
fn golden_competition_case_passes_through_the_parity_runner() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/golden/competition");
    let report = agm_train::parity::run_case(&dir).unwrap();
    println!("{report}");
    assert!(report.passed(), "{report}");
    assert_eq!((report.tensors_compared, report.scalars_compared), (12, 10), "{report}");
}
