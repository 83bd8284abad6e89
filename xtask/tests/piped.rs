//! `cargo xtask train` with its output going to a pipe, as in CI logs and under `tee`.

use std::process::Command;

#[test]
fn piped_output_has_one_line_per_epoch_and_two_runs_get_two_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |out: &str| {
        Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(["train", "--epochs", "2", "--out", out, "--concepts"])
            .arg(tmp.path().join("concepts"))
            .current_dir(tmp.path())
            .output()
            .unwrap()
    };
    let output = run("first");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let epochs: Vec<&str> = stdout.lines().filter(|l| l.starts_with("epoch ")).collect();
    assert_eq!(epochs.len(), 2, "{stdout}");
    assert!(epochs[1].starts_with("epoch   2  loss") && epochs[1].contains("val acc"), "{stdout}");
    assert!(stdout.contains("competition strength (validation, last epoch"), "{stdout}");
    // Without --out, two runs of one configuration get two directories.
    for _ in 0..2 {
        let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(["train", "--epochs", "1", "--no-concepts"])
            .current_dir(tmp.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let runs: Vec<String> = std::fs::read_dir(tmp.path().join("runs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(runs.iter().all(|r| r.starts_with("av-digits-late-agm-seed0-")), "{runs:?}");
}

#[test]
fn device_cuda_without_nvcc_stops_before_building_and_names_nvcc() {
    if cfg!(feature = "cuda") || std::path::Path::new("/usr/local/cuda/bin/nvcc").exists() {
        return; // CUDA built in, or a system toolkit: the CUDA path would run, not this case.
    }
    let tmp = tempfile::tempdir().unwrap();
    // Every command that takes --device, before it writes anything.
    for args in [
        &["train", "--device", "cuda", "--epochs", "1"][..],
        &["study", "--methods", "joint", "--seeds", "1", "--device", "cuda"],
        &["reproduce", "avmnist", "--data", "nowhere", "--device=cuda"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(args)
            .current_dir(tmp.path())
            .env("PATH", tmp.path())
            .env_remove("NVCC")
            .env_remove("CUDA_HOME")
            .env_remove("CUDA_ROOT")
            .env_remove("AGM_XTASK_CUDA_REEXEC")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}: {stderr}");
        assert!(stderr.contains("nvcc") && stderr.contains("scripts/cuda-env.sh"), "{args:?}: {stderr}");
        assert!(!stderr.contains("rebuilding"), "no build starts: {stderr}");
        assert!(!tmp.path().join("runs").exists(), "{args:?}: nothing is written");
    }
}

#[test]
fn ctrl_c_stops_a_run_at_a_step_with_its_checkpoint() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["train", "--epochs", "100000", "--no-concepts", "--out", "run"])
        .current_dir(tmp.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // Once an epoch has ended, as a user would press it.
    for line in lines.by_ref() {
        if line.unwrap().starts_with("epoch ") {
            break;
        }
    }
    let kill = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{rest:?}");
    let last = rest.last().unwrap();
    assert!(last.starts_with("interrupted at step") && last.contains("--resume"), "{rest:?}");
    assert!(tmp.path().join("run/checkpoint.safetensors").is_file());
    // The finished epochs are in metrics.csv and the report, as for a finished run.
    let csv = std::fs::read_to_string(tmp.path().join("run/metrics.csv")).unwrap();
    assert!(csv.lines().count() >= 2, "{csv}");
    assert!(tmp.path().join("run/report/README.md").is_file());
}

#[test]
fn missing_dataset_files_stop_train_and_reproduce_before_a_run_directory_exists() {
    let tmp = tempfile::tempdir().unwrap();
    for args in [
        &["train", "--dataset", "avmnist", "--data", "nowhere"][..],
        &["train", "--dataset", "urfunny", "--data", "nowhere"],
        &["train", "--dataset", "cremad", "--data", "."],
        &["reproduce", "avmnist", "--data", "nowhere"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_xtask")).args(args).current_dir(tmp.path()).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}: {stderr}");
        assert!(stderr.contains("does not exist") || stderr.contains("lacks these 3 files"), "{args:?}: {stderr}");
        assert!(stderr.contains("README.md, section Datasets"), "{args:?}: {stderr}");
        assert!(!tmp.path().join("runs").exists(), "{args:?} wrote a run directory");
    }
}

#[test]
fn missing_init_weights_stop_train_before_a_run_directory_exists() {
    let tmp = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["train", "--init-weights", "ckpt_full_epoch99.pth.tar"])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("init_weights = `ckpt_full_epoch99.pth.tar`: no such file"), "{stderr}");
    assert!(!tmp.path().join("runs").exists(), "wrote a run directory");
}

#[test]
fn a_study_refuses_a_training_run_s_directory_as_its_folder() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("run")).unwrap();
    std::fs::write(tmp.path().join("run/config.toml"), "epochs = 2\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["study", "--methods", "joint", "--seeds", "1", "--out", "run"])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("is a training run's directory"), "{stderr}");
    assert_eq!(std::fs::read_dir(tmp.path().join("run")).unwrap().count(), 1, "nothing written into the run");
}
