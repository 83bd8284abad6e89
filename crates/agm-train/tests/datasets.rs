//! The paper datasets end to end through `RunConfig`: load the on-disk fixture, build the
//! dataset's default preset at the reference shapes, train one epoch of AGM, evaluate. CREMA-D's
//! loader is covered by agm-data's tests and its presets by the synthetic runs.

use std::path::{Path, PathBuf};

use agm_train::{config, NoCallback, RunConfig};
use candle_core::Device;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../agm-data/tests/fixtures").join(name)
}

/// One epoch's summary, and the notes on inputs shaped unlike the preset's reference.
fn one_epoch(dataset: &str, data: &Path) -> (agm_train::RunSummary, Vec<String>) {
    let cfg = RunConfig {
        dataset: dataset.into(),
        data: data.to_string_lossy().into_owned(),
        model: config::default_model(dataset),
        epochs: 1,
        batch_size: 2,
        ..RunConfig::av_digits()
    };
    cfg.validate().unwrap_or_else(|e| panic!("{dataset}: {e}"));
    let device = Device::Cpu;
    let built = cfg.build(&device).unwrap_or_else(|e| panic!("{dataset}: {e}"));
    let train = cfg.train_source(&built.data);
    let mut trainer = cfg.trainer(built.model.as_ref(), built.modulator, &built.data, &device).unwrap();
    let summary = trainer.fit(train.as_ref(), &built.data.validation, &mut NoCallback).unwrap();
    let last = summary.last.clone().expect("one epoch");
    assert!(last.train_loss.is_finite(), "{dataset}: loss {}", last.train_loss);
    let m = built.data.modalities.len();
    assert_eq!(last.validation.modality_accuracy.len(), m, "{dataset}");
    (summary, cfg.input_shape_notes(&built.data).unwrap())
}

#[test]
fn avmnist_folder_trains_with_avmnist_late() {
    let dir = tempfile::tempdir().unwrap();
    agm_data::loaders::avmnist::write_random_folder(dir.path(), 12, 6, 0).unwrap();
    let (_, notes) = one_epoch("avmnist", dir.path());
    assert!(notes.is_empty(), "the reference's shapes: {notes:?}");
}

#[test]
fn ave_features_train_with_the_psp_net_per_segment() {
    one_epoch("ave", &fixture("ave"));
}

#[test]
fn mosei_pickles_train_with_the_mat_net_and_the_data_vocabulary() {
    one_epoch("mosei", &fixture("mosei"));
}

#[test]
fn urfunny_pickle_trains_with_three_transformers() {
    // Padded to 4 steps where the reference pads to 50: the run says so, once per modality.
    let (_, notes) = one_epoch("urfunny", &fixture("urfunny/humor_p4.pkl"));
    assert_eq!(notes.len(), 3, "{notes:?}");
    assert!(notes[0].contains("reference shape is [50,") && notes[0].contains("built for the data's"), "{notes:?}");
}

#[test]
fn a_real_dataset_without_data_is_an_error_naming_the_flag() {
    // Valid as a configuration (it prints), refused where the files are needed.
    let cfg = RunConfig { dataset: "cremad".into(), model: "cremad-late".into(), ..RunConfig::av_digits() };
    cfg.validate().unwrap();
    for err in [cfg.check_input_files().unwrap_err(), cfg.load_dataset().err().unwrap()] {
        assert!(err.to_string().contains("needs its files: pass --data"), "{err}");
    }
    let cfg = RunConfig { dataset: "avmnist".into(), data: "x".into(), ..RunConfig::av_digits() };
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("made for dataset `av-digits`") && err.contains("avmnist-late"), "{err}");
}
