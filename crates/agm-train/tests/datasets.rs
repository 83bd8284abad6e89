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
    // 13 rows leave no batch of 1 sample, which the ResNet's 1×1 batch norm refuses.
    agm_data::loaders::avmnist::write_random_folder(dir.path(), 13, 6, 0).unwrap();
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
fn mosei_runs_start_from_the_glove_vectors_and_sum_their_loss() {
    use agm_core::MultimodalModel;
    // The reference's settings: `CrossEntropyLoss(reduction="sum")` (run/MOSEI_main.py).
    let cfg =
        RunConfig { data: fixture("mosei").to_string_lossy().into_owned(), ..RunConfig::for_dataset("mosei").unwrap() };
    assert_eq!(cfg.loss_reduction, "sum");
    assert_eq!(cfg.trainer_options().loss_reduction, agm_train::LossReduction::Sum);
    assert_eq!(RunConfig::for_dataset("ave").unwrap().loss_reduction, "mean");
    // The fixture's vocabulary has ids 0..=7; ten rows of GloVe make a ten-row embedding, as
    // the reference sizes it by its vocabulary.
    let dir = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(fixture("mosei")).unwrap() {
        let p = f.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    let (rows, dim) = (10, 300);
    let body: Vec<u8> = (0..rows * dim).flat_map(|i| ((i % 97) as f32 / 64.0).to_le_bytes()).collect();
    let glove = dir.path().join("train_glove.npy");
    agm_data::loaders::array::write_npy(&glove, "<f4", &[rows, dim], &body).unwrap();
    let cfg = RunConfig { data: dir.path().to_string_lossy().into_owned(), ..cfg };
    let built = cfg.build(&Device::Cpu).unwrap();
    let groups = built.model.param_groups();
    let embedding = groups.find(agm_fusion::MoseiMatNet::EMBEDDING).unwrap().var.as_tensor().clone();
    assert_eq!(embedding.dims(), [rows, dim]);
    let values = embedding.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(values.iter().enumerate().all(|(i, &v)| v == (i % 97) as f32 / 64.0));
    // Vectors of another width than the model's embedding are refused, naming the file.
    agm_data::loaders::array::write_npy(&glove, "<f4", &[rows, 4], &body[..rows * 4 * 4]).unwrap();
    let e = cfg.build(&Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("train_glove.npy") && e.contains("[10, 4]") && e.contains("[10, 300]"), "{e}");
}

#[test]
fn urfunny_pickle_trains_with_three_transformers() {
    // The fixture's samples are [8, F] with small F where the reference's are [50, 81 | 371 | 300]:
    // the run says so, once per modality.
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
