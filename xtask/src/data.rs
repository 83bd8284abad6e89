//! `cargo xtask data`.

use std::process::ExitCode;

use agm_data::av_digits;
use sha2::{Digest, Sha256};

use crate::cli::{DataArgs, DataCommand};

pub fn run(args: DataArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        DataCommand::BuildAvDigits { wheel_dir, out } => {
            let bytes = av_digits::build_asset(&wheel_dir)?;
            let out = out.unwrap_or_else(|| crate::workspace_root().join(av_digits::ASSET_PATH_IN_REPO));
            agm_train::checkpoint::write_atomic(&out, &bytes)?;
            let hash: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
            println!("wrote {} ({} bytes, sha256 {hash})", out.display(), bytes.len());
            if hash == av_digits::ASSET_SHA256 {
                println!("identical to the committed asset");
            } else {
                println!(
                    "differs from the committed asset (sha256 {}); commit it and update ASSET_SHA256",
                    av_digits::ASSET_SHA256
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        DataCommand::Check { dataset, path } => check(&dataset, &path),
    }
}

/// `cargo xtask data check <dataset> <path>`: loads (or, for AV-MNIST, opens and validates) the
/// dataset and prints split sizes, sample shapes and label counts. Both paths end in
/// `agm_data::loaders::validate::validate_splits`, the check `train` runs.
fn check(dataset: &str, spec: &str) -> anyhow::Result<ExitCode> {
    use agm_data::loaders::{self, avmnist, splits, DatasetId, LoadOptions};

    let id: DatasetId = dataset.parse()?;
    if !DatasetId::ALL.contains(&id) {
        let with_files: Vec<&str> = DatasetId::ALL.iter().map(|d| d.as_str()).collect();
        let what = if id == DatasetId::AvDigits { "embedded in agm" } else { "generated at run time" };
        anyhow::bail!(
            "dataset `{}` has no files to check (it is {what}); `data check` takes {}",
            id.as_str(),
            with_files.join(", ")
        );
    }
    let root = agm_data::hub::resolve_data_path(spec, &agm_data::hub::HubOptions::from_env())?;
    println!("checking {} at {}", id.as_str(), root.display());
    loaders::require_all(id, &root)?;
    if id == DatasetId::AvMnist {
        // Opens every file through memory maps and checks shapes and labels without reading the
        // (multi-GB) arrays into memory.
        let f = avmnist::AvMnistFiles::open(&root)?;
        // The same check `load` (and so `train`) runs: no empty split, no NaN/Inf input.
        loaders::validate::validate_avmnist_mapped(&root, &LoadOptions::default())?;
        let (ntr, nte) = (f.train_labels.len(), f.test_labels.len());
        for file in [&f.train_audio, &f.test_audio, &f.train_image, &f.test_image] {
            println!("  {}: {:?} {:?}", file.path().display(), file.shape(), file.dtype());
        }
        let agm_train = splits::ninety(ntr);
        let nval = splits::validation_positions(agm_train, splits::VALIDATION_SEED).len();
        println!(
            "  splits: train {} / validation {nval} / test {} / dep {}",
            agm_train - nval,
            splits::ninety(nte),
            ntr - agm_train + nte - splits::ninety(nte)
        );
        println!("  sample shapes: audio {:?}, visual [1, 28, 28]", f.audio_shape());
        println!("  train label counts: {:?}", counts(&f.train_labels, avmnist::CLASSES));
        println!("  test label counts: {:?}", counts(&f.test_labels, avmnist::CLASSES));
        if let Some(note) = loaders::smaller_than_release(id, &root)? {
            println!("  note: {note}");
        }
        println!("ok");
        return Ok(ExitCode::SUCCESS);
    }
    let mut d = loaders::load(id, &root, &LoadOptions::default())?;
    // In the order training logs them: the default model's.
    agm_train::RunConfig::for_dataset(id.as_str())?.order_as_model(&mut d)?;
    println!("  modalities: {:?}, classes: {}", d.modalities.names(), d.classes);
    let mut parts = vec![("train", &d.train), ("validation", &d.validation), ("test", &d.test)];
    if let Some(dep) = &d.dep {
        parts.push(("dep", dep));
    }
    for (name, s) in parts {
        let shapes: Vec<_> = (0..s.num_modalities()).map(|m| s.sample_shape(m).to_vec()).collect();
        println!("  {name}: {} samples, shapes {shapes:?}, label counts {:?}", s.len(), counts(s.labels(), d.classes));
    }
    for n in &d.notes {
        println!("  note: {n}");
    }
    if let Some(note) = loaders::smaller_than_release(id, &root)? {
        println!("  note: {note}");
    }
    println!("ok");
    Ok(ExitCode::SUCCESS)
}

fn counts(labels: &[u32], classes: usize) -> Vec<usize> {
    let mut c = vec![0; classes];
    labels.iter().for_each(|&l| c[(l as usize).min(classes - 1)] += 1);
    c
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_dataset_without_files_gets_one_clear_sentence() {
        let err = super::check("av-digits", "/nonexistent").unwrap_err().to_string();
        assert_eq!(
            err,
            "dataset `av-digits` has no files to check (it is embedded in agm); `data check` takes avmnist, \
             cremad, urfunny, ave, mosei"
        );
        let err = super::check("synthetic", "/nonexistent").unwrap_err().to_string();
        assert!(err.starts_with("dataset `synthetic` has no files to check (it is generated at run time)"), "{err}");
    }
}
