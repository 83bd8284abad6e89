//! Golden parity: the real training step replays the official AGM and OGM-GE runs, and the
//! MSLR/MSES bookkeeping replays the official epoch loops (FORMAT.md).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use agm_train::parity::{run_case, CaseReport, ParityError};
use candle_core::{Device, Tensor};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/golden").join(name)
}

/// A writable copy of a fixture folder.
fn copy_case(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for file in ["case.json", "tensors.safetensors"] {
        std::fs::copy(fixture(name).join(file), dir.path().join(file)).unwrap();
    }
    dir
}

fn edit_json(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("case.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

fn group_count(report: &CaseReport, group: &str) -> usize {
    report.groups.get(group).map_or(0, |g| g.compared)
}

/// Every tensor group of FORMAT.md §7 was compared, once per parameter / modality / pass / step.
fn assert_groups(report: &CaseReport, steps: usize, params: usize, buffers: usize, passes: usize, m: usize) {
    let expect = [
        ("pass", passes),
        ("feature", 1),
        ("m", m),
        ("out", 1),
        ("grad_backward", params),
        ("grad_final", params),
        ("params_after", params),
        ("momentum_after", params),
        ("buffers_after", buffers),
    ];
    for (group, per_step) in expect {
        assert_eq!(group_count(report, group), per_step * steps, "group {group}\n{report}");
    }
    let mc = if m >= 3 { m } else { 0 };
    assert_eq!(group_count(report, "m_mc"), mc * steps, "group m_mc\n{report}");
    let total: usize = expect.iter().map(|(_, n)| n * steps).sum::<usize>() + mc * steps;
    assert_eq!(report.tensors_compared, total, "{report}");
    for field in ["loss", "scores", "coeff", "ratio", "opt_ratio", "hook_scale_in_effect", "lr", "clip_fired"] {
        assert!(report.groups.contains_key(&format!("scalar:{field}")), "scalar:{field} not compared\n{report}");
    }
}

#[test]
#[allow(clippy::print_stdout)] // the report, shown with --nocapture
fn agm2_matches_the_official_run() {
    let report = run_case(&fixture("agm2")).unwrap();
    println!("{report}");
    assert!(report.passed(), "{report}");
    assert_eq!((report.case.as_str(), report.kind.as_str()), ("agm2", "train_steps"));
    // 10 parameters, 6 buffers, passes av/a/v, 2 modalities, 6 steps.
    assert_groups(&report, 6, 10, 6, 3, 2);
    // Clipping fires in some steps (then its norm and coefficient are compared too).
    assert!(report.groups.contains_key("scalar:clip_total_norm"), "{report}");
}

#[test]
#[allow(clippy::print_stdout)] // the report, shown with --nocapture
fn agm2_with_a_decaying_learning_rate_matches_the_official_run() {
    // Made by scripts/golden/agm_train_steps.py (the official `train` and `GradMod`): StepLR
    // divides the lr by 10 every epoch (0.5, 0.05, 0.005), alpha 4, clipping fires in 7 of 12 steps.
    let report = run_case(&fixture("agm2_steplr")).unwrap();
    println!("{report}");
    assert!(report.passed(), "{report}");
    assert_groups(&report, 12, 10, 6, 3, 2);
    assert_eq!(report.groups["scalar:clip_total_norm"].compared, 7, "{report}");
}

#[test]
fn agm2_in_the_cremad_loop_matches_the_official_run() {
    // Made by scripts/golden/agm_train_steps.py --semantics cremad (the official CREMA-D `train`
    // and `GradMod`, four passes with the unused all-muted one): the clamp at 10 fires in three
    // steps (opt_ratio − ratio up to 35), clipping in 8 of 10.
    let report = run_case(&fixture("agm2_cremad")).unwrap();
    assert!(report.passed(), "{report}");
    assert_groups(&report, 10, 10, 6, 4, 2);
    assert_eq!(report.groups["scalar:clip_total_norm"].compared, 8, "{report}");
    assert!(report.groups.contains_key("scalar:clamp_fired"), "{report}");
}

#[test]
fn agm2_with_a_modulation_window_matches_the_official_run() {
    // Made by scripts/golden/agm_train_steps.py --window 2,2: scales 1 in epoch 1, installed in
    // epoch 2, and epoch 2's last scales still in force in epoch 3 (the reference's stale scales).
    let report = run_case(&fixture("agm2_window")).unwrap();
    assert!(report.passed(), "{report}");
    assert_groups(&report, 6, 10, 6, 3, 2);
    assert_eq!(report.groups["scalar:hook_scale_in_effect"].compared, 12, "{report}");
}

#[test]
#[allow(clippy::print_stdout)] // the report, shown with --nocapture
fn agm3_with_a_decaying_learning_rate_and_a_clamped_coefficient_matches_the_official_run() {
    // Made by scripts/golden/agm_train_steps.py --semantics urfunny (the official UR-Funny `train`
    // and `GradMod`): lr 0.5 then 0.05, alpha 5, text's coefficient clamped once (1.6e15),
    // clipping in 4 of 6 steps.
    let report = run_case(&fixture("agm3_steplr")).unwrap();
    println!("{report}");
    assert!(report.passed(), "{report}");
    assert_groups(&report, 6, 14, 9, 8, 3);
    assert_eq!(report.groups["scalar:clip_total_norm"].compared, 4, "{report}");
    assert!(report.groups.contains_key("scalar:clamp_fired"), "{report}");
}

#[test]
#[allow(clippy::print_stdout)] // the report, shown with --nocapture
fn agm3_matches_the_official_run() {
    let report = run_case(&fixture("agm3")).unwrap();
    println!("{report}");
    assert!(report.passed(), "{report}");
    // 14 parameters, 9 buffers, 8 passes (keep_none included), 3 modalities, 6 steps.
    assert_groups(&report, 6, 14, 9, 8, 3);
    assert!(report.groups.contains_key("scalar:clamp_fired"), "{report}");
}

#[test]
#[allow(clippy::print_stdout)] // the report, shown with --nocapture
fn competition_with_more_features_than_fit_samples_matches_the_official_metric() {
    // Made by scripts/golden/competition_strength.py (scikit-learn's Ridge as the official code
    // fits it, then the official `test_compute_weight`): 50 features, 20 dep samples, so the
    // ridge is solved in its dual form.
    let report = run_case(&fixture("competition_dual")).unwrap();
    println!("{report}");
    assert!(report.passed(), "{report}");
    assert_eq!(report.kind, "competition_strength");
    assert_eq!(report.tensors_compared, 12, "{report}");
    assert_eq!(group_count(&report, "scalar:r_official"), 2, "{report}");
}

#[test]
fn a_perturbed_gradient_fails_and_is_named() {
    let dir = copy_case("agm2");
    let path = dir.path().join("tensors.safetensors");
    let mut tensors: HashMap<String, Tensor> = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let key = "step2/grad_final/net.visual_encoder.1.weight";
    let t = &tensors[key];
    let mut v = t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    // The element with the largest magnitude, so the change is 1e-6 relative to the tensor.
    let i = (0..v.len()).max_by(|&a, &b| v[a].abs().total_cmp(&v[b].abs())).unwrap();
    v[i] *= 1.0 + 1e-6;
    let perturbed = Tensor::from_vec(v, t.shape(), &Device::Cpu).unwrap();
    tensors.insert(key.to_string(), perturbed);
    candle_core::safetensors::save(&tensors, &path).unwrap();

    let report = run_case(dir.path()).unwrap();
    assert!(!report.passed(), "{report}");
    let keys: Vec<&str> = report.failures.iter().map(|f| f.key.as_str()).collect();
    assert_eq!(keys, [key], "{report}");
    assert!(report.failures[0].err > 1e-8, "{report}");
    assert!(report.to_string().contains("FAIL"), "{report}");
}

#[test]
fn a_perturbed_coefficient_fails_and_is_named() {
    let dir = copy_case("agm2");
    edit_json(dir.path(), |v| {
        let c = &mut v["steps"][1]["coeff"]["visual"];
        *c = serde_json::json!(c.as_f64().unwrap() * (1.0 + 1e-8));
    });
    let report = run_case(dir.path()).unwrap();
    assert!(!report.passed(), "{report}");
    let keys: Vec<&str> = report.failures.iter().map(|f| f.key.as_str()).collect();
    assert_eq!(keys, ["steps[1].coeff.visual"], "{report}");
}

#[test]
fn unknown_or_unimplemented_kinds_and_methods_are_errors() {
    let dir = copy_case("agm2");
    edit_json(dir.path(), |v| v["kind"] = "train_wheels".into());
    let err = run_case(dir.path()).unwrap_err();
    assert!(err.to_string().contains("unknown kind `train_wheels`"), "{err}");
    // agm2's data is no competition case.
    edit_json(dir.path(), |v| v["kind"] = "competition_strength".into());
    assert!(run_case(dir.path()).is_err());
    // An epoch_schedule case needs its runs.
    edit_json(dir.path(), |v| v["kind"] = "epoch_schedule".into());
    let err = run_case(dir.path()).unwrap_err();
    assert!(err.to_string().contains("runs"), "{err}");

    // The method is read from case.json: agm2's data replayed as OGM-GE runs and differs.
    edit_json(dir.path(), |v| v["kind"] = "train_steps".into());
    edit_json(dir.path(), |v| v["method"] = "OGM-GE".into());
    let report = run_case(dir.path()).unwrap();
    assert_eq!(report.method.as_deref(), Some("OGM-GE"));
    assert!(!report.passed(), "{report}");

    edit_json(dir.path(), |v| v["method"] = "MAGIC".into());
    let err = run_case(dir.path()).unwrap_err();
    assert!(matches!(err, ParityError::UnknownMethod { .. }), "{err}");
    assert!(err.to_string().contains("`MAGIC`") && err.to_string().contains("AGM"), "{err}");
}

#[test]
fn the_folder_name_does_not_select_the_behaviour() {
    // agm3's data in a folder named like the 2-modality case still replays as 3 modalities.
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("agm2");
    std::fs::create_dir(&dir).unwrap();
    for file in ["case.json", "tensors.safetensors"] {
        std::fs::copy(fixture("agm3").join(file), dir.join(file)).unwrap();
    }
    let report = run_case(&dir).unwrap();
    assert!(report.passed(), "{report}");
    assert_eq!(group_count(&report, "m_mc"), 18);
}

#[test]
fn missing_or_corrupt_files_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let err = run_case(dir.path()).unwrap_err();
    let case_json = dir.path().join("case.json");
    assert!(err.to_string().contains(&case_json.display().to_string()), "{err}");

    std::fs::write(&case_json, "{ not json").unwrap();
    let err = run_case(dir.path()).unwrap_err();
    assert!(err.to_string().contains(&case_json.display().to_string()), "{err}");

    std::fs::copy(fixture("agm2").join("case.json"), &case_json).unwrap();
    let err = run_case(dir.path()).unwrap_err();
    let tensors = dir.path().join("tensors.safetensors");
    assert!(err.to_string().contains(&tensors.display().to_string()), "{err}");

    std::fs::write(&tensors, b"garbage").unwrap();
    let err = run_case(dir.path()).unwrap_err();
    assert!(err.to_string().contains(&tensors.display().to_string()), "{err}");
}

#[test]
fn a_missing_field_is_an_error_naming_it() {
    let dir = copy_case("agm2");
    edit_json(dir.path(), |v| {
        v["hyper"].as_object_mut().unwrap().remove("alpha");
    });
    let err = run_case(dir.path()).unwrap_err();
    assert!(err.to_string().contains("alpha") && err.to_string().contains("case.json"), "{err}");
}

#[test]
#[allow(clippy::print_stdout)] // the report, shown with --nocapture
fn ogm_matches_the_official_run() {
    let report = run_case(&fixture("ogm")).unwrap();
    println!("{report}");
    assert!(report.passed(), "{report}");
    assert_eq!(report.method.as_deref(), Some("OGM-GE"));
    // 14 parameters (conv encoders), 6 buffers, passes av/a/v, 2 modalities, 4 steps, and the
    // gradient after OGM's edit.
    let steps = 4;
    for (group, per_step) in [
        ("pass", 3),
        ("feature", 1),
        ("m", 2),
        ("out", 1),
        ("grad_backward", 14),
        ("grad_modulated", 14),
        ("grad_final", 14),
        ("params_after", 14),
        ("momentum_after", 14),
        ("buffers_after", 6),
    ] {
        assert_eq!(group_count(&report, group), per_step * steps, "group {group}\n{report}");
    }
    assert_eq!(report.tensors_compared, (3 + 1 + 2 + 1 + 14 * 5 + 6) * steps, "{report}");
    for field in [
        "ogm.score_sum",
        "ogm.ratio",
        "ogm.coeff",
        "ogm.modulated_params",
        "ogm.noise_std",
        "scores",
        "coeff",
        "running_score_after",
        "hook_scale_in_effect",
        "clip_fired",
        "loss",
    ] {
        assert!(report.groups.contains_key(&format!("scalar:{field}")), "scalar:{field} not compared\n{report}");
    }
    assert_eq!(group_count(&report, "scalar:ogm.coeff"), 2 * steps);
    assert_eq!(group_count(&report, "scalar:ogm.ratio"), 2 * steps);
}

#[test]
#[allow(clippy::print_stdout)] // the report, shown with --nocapture
fn ogm_with_other_shapes_and_a_decaying_learning_rate_matches_the_official_run() {
    // Made by scripts/golden/agm_train_steps.py --method ogm-ge: two input channels for audio,
    // two convolution channels, lr 0.3 then 0.03, OGM alpha 2.
    let report = run_case(&fixture("ogm_steplr")).unwrap();
    println!("{report}");
    assert!(report.passed(), "{report}");
    assert_eq!(report.method.as_deref(), Some("OGM-GE"));
    let steps = 6;
    assert_eq!(group_count(&report, "grad_modulated"), 14 * steps, "{report}");
    for field in ["ogm.coeff", "ogm.ratio", "ogm.score_sum", "ogm.noise_std"] {
        assert_eq!(group_count(&report, &format!("scalar:{field}")), 2 * steps, "{field}\n{report}");
    }
}

#[test]
fn a_perturbed_ogm_coefficient_or_parameter_list_fails_and_is_named() {
    let dir = copy_case("ogm");
    edit_json(dir.path(), |v| {
        let c = &mut v["steps"][2]["ogm"]["coeff"]["audio"];
        *c = serde_json::json!(c.as_f64().unwrap() * (1.0 + 1e-8));
        v["steps"][3]["ogm"]["modulated_params"] = serde_json::json!(["net.audio_encoder.0.weight"]);
    });
    let report = run_case(dir.path()).unwrap();
    let keys: Vec<&str> = report.failures.iter().map(|f| f.key.as_str()).collect();
    assert_eq!(keys, ["steps[2].ogm.coeff.audio", "steps[3].ogm.modulated_params"], "{report}");
}

#[test]
#[allow(clippy::print_stdout)] // the report, shown with --nocapture
fn mslr_mses_matches_the_official_runs() {
    let report = run_case(&fixture("mslr_mses")).unwrap();
    println!("{report}");
    assert!(report.passed(), "{report}");
    assert_eq!(report.kind, "epoch_schedule");
    for field in [
        "epoch",
        "exit_here",
        "during.lr_ratio",
        "during.grad_multiplier",
        "during.running_score_passed_in",
        "during.model_restored_from_epoch_tag",
        "after.lr_ratio",
        "after.memory",
        "after.smoothed_loss",
        "after.min_smoothed_loss",
        "after.argmin_epoch",
        "checkpoints_saved",
        "checkpoints_loaded",
        "running_scores_after_update",
        "continues_after_official_error",
    ] {
        assert!(report.groups.contains_key(&format!("scalar:{field}")), "scalar:{field} not compared\n{report}");
    }
    // Every epoch of the five runs: 12 + 24 + 11 (before run 3's official crash) + 10 + 47.
    assert_eq!(group_count(&report, "scalar:epoch"), 12 + 24 + 11 + 10 + 47, "{report}");
    assert!(group_count(&report, "expected/lr_ratio_after_update") >= 11, "{report}");
    // Run 3's crash is a documented difference, listed in the report.
    assert!(report.informational.iter().any(|n| n.contains("FileNotFoundError")), "{report}");
}

#[test]
fn a_perturbed_schedule_fails_and_is_named() {
    let dir = copy_case("mslr_mses");
    edit_json(dir.path(), |v| {
        v["runs"][1]["epochs"][17]["checkpoints_loaded"] = serde_json::json!(["ckpt_full_epoch8.pth.tar"]);
        let r = &mut v["runs"][0]["epochs"][7]["after_update"]["visual"]["lr_ratio"];
        *r = serde_json::json!(r.as_f64().unwrap() * (1.0 + 1e-8));
        v["runs"][4]["epochs"][10]["after_update"]["text"]["argmin_epoch"] = serde_json::json!(3.0);
    });
    let report = run_case(dir.path()).unwrap();
    let keys: Vec<&str> = report.failures.iter().map(|f| f.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "run1_avmnist_mslr.epochs[7].after_update.visual.lr_ratio",
            "run2_avmnist_mses.epochs[17].checkpoints_loaded",
            "run5_urfunny_mses.epochs[10].after_update.text.argmin_epoch",
        ],
        "{report}"
    );
}

/// Made by `scripts/golden/epoch_schedule.py` from the official loops: two modalities stopping in
/// one epoch (one checkpoint loaded twice, then the exit), a UR-Funny exit whose stops all skip
/// the reload, and two runs in the official default window 0..=20 (no multiplier after epoch 20:
/// MSLR's go back to 1, a stopped MSES modality trains again).
#[test]
fn mslr_mses_window_matches_the_official_runs() {
    let report = run_case(&fixture("mslr_mses_window")).unwrap();
    assert!(report.passed(), "{report}");
    assert_eq!(group_count(&report, "scalar:epoch"), 17 + 32 + 30 + 40, "{report}");
    // Without the window, the multipliers after epoch 20 are the schedule's, not the official 1.
    let dir = copy_case("mslr_mses_window");
    edit_json(dir.path(), |v| {
        for run in v["runs"].as_array_mut().unwrap() {
            run.as_object_mut().unwrap().remove("modulation_window_epochs");
        }
    });
    let report = run_case(dir.path()).unwrap();
    assert!(!report.passed(), "{report}");
    assert!(report.failures.iter().all(|f| f.key.contains("grad_multiplier")), "{report}");
    assert!(report.failures.iter().any(|f| f.key.starts_with("run3_avmnist_mslr.epochs[20]")), "{report}");
    assert!(report.failures.iter().any(|f| f.key.starts_with("run4_urfunny_mses")), "{report}");
}

/// Every `method_steps` case under tests/fixtures/golden, found by its `kind` (a new method's
/// case needs no new test).
#[test]
fn every_method_steps_case_matches() {
    let root = fixture("");
    let mut ran = Vec::new();
    for entry in std::fs::read_dir(&root).unwrap() {
        let dir = entry.unwrap().path();
        let Ok(text) = std::fs::read_to_string(dir.join("case.json")) else { continue };
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        if json["kind"] != "method_steps" {
            continue;
        }
        let report = run_case(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        println!("{report}");
        assert!(report.passed(), "{report}");
        ran.push(report.case);
    }
    println!("method_steps cases: {ran:?}");
}

#[test]
fn a_method_steps_case_with_a_wrong_parameter_fails_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    write_joint_case(dir.path(), 0.0);
    let report = run_case(dir.path()).unwrap();
    assert!(report.passed(), "{report}");
    write_joint_case(dir.path(), 1e-6);
    let report = run_case(dir.path()).unwrap();
    assert!(!report.passed());
    assert!(report.failures.iter().any(|f| f.key == "step2/params_after/net.head.fc.bias"), "{report}");
}

/// A `method_steps` case of plain joint training (one SGD step of cross-entropy, computed here
/// by hand), with `error` added to the expected head bias after step 2.
fn write_joint_case(dir: &Path, error: f64) {
    let dev = Device::Cpu;
    let (b, c, h, d) = (2usize, 2usize, 2usize, 2usize);
    let t = |v: &[f64], shape: &[usize]| Tensor::from_vec(v.to_vec(), shape, &dev).unwrap();
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let mut params: Vec<(String, Tensor)> = vec![
        ("net.audio_encoder.0.weight".into(), t(&[0.5, -0.25, 0.125, 0.75], &[h, d])),
        ("net.audio_encoder.0.bias".into(), t(&[0.0625, -0.1875], &[h])),
        ("net.visual_encoder.0.weight".into(), t(&[-0.5, 0.25, 0.375, 0.5], &[h, d])),
        ("net.visual_encoder.0.bias".into(), t(&[0.125, 0.25], &[h])),
        ("net.head.fc.weight".into(), t(&[0.25, -0.5, 0.75, 0.125, -0.25, 0.5, 0.375, -0.75], &[c, 2 * h])),
        ("net.head.fc.bias".into(), t(&[0.0, 0.0625], &[c])),
    ];
    for (n, p) in &params {
        tensors.insert(format!("init/params/{n}"), p.clone());
    }
    let audio = t(&[1.0, 0.5, -0.5, 0.25, 0.75, -1.0, 0.5, 0.5], &[4, d]);
    let visual = t(&[0.25, -0.75, 1.0, 0.5, -0.25, 0.5, 0.125, 1.0], &[4, d]);
    let labels = [0i64, 1, 1, 0];
    tensors.insert("train/input/audio".into(), audio.clone());
    tensors.insert("train/input/visual".into(), visual.clone());
    tensors.insert("train/label".into(), Tensor::new(&labels, &dev).unwrap());
    // Plain SGD (lr 0.5, no momentum) on mean cross-entropy, by candle autograd on plain ops (no
    // pre-activation is exactly 0, where candle's ReLU gradient differs from PyTorch's).
    let mut steps = Vec::new();
    for k in 0..2 {
        let vars: Vec<candle_core::Var> =
            params.iter().map(|(_, p)| candle_core::Var::from_tensor(p).unwrap()).collect();
        let rows = |x: &Tensor| x.narrow(0, k * b, b).unwrap();
        let enc = |x: &Tensor, w: &candle_core::Var, bias: &candle_core::Var| {
            rows(x)
                .matmul(&w.as_tensor().t().unwrap())
                .unwrap()
                .broadcast_add(bias.as_tensor())
                .unwrap()
                .relu()
                .unwrap()
        };
        let feat = Tensor::cat(&[enc(&audio, &vars[0], &vars[1]), enc(&visual, &vars[2], &vars[3])], 1).unwrap();
        let logits =
            feat.matmul(&vars[4].as_tensor().t().unwrap()).unwrap().broadcast_add(vars[5].as_tensor()).unwrap();
        let y = Tensor::new(&[labels[2 * k] as u32, labels[2 * k + 1] as u32], &dev).unwrap();
        let loss = candle_nn::loss::cross_entropy(&logits, &y).unwrap();
        steps.push(serde_json::json!({"step": k + 1, "epoch": 1, "loss": loss.to_scalar::<f64>().unwrap()}));
        let grads = loss.backward().unwrap();
        for ((name, p), v) in params.iter_mut().zip(&vars) {
            *p = (v.as_tensor() - (grads.get(v.as_tensor()).unwrap() * 0.5).unwrap()).unwrap();
            let mut after = p.clone();
            if k == 1 && name == "net.head.fc.bias" {
                after = (after + error).unwrap();
            }
            tensors.insert(format!("step{}/params_after/{name}", k + 1), after);
        }
    }
    let parameters: Vec<_> =
        params.iter().map(|(n, p)| serde_json::json!({"name": n, "shape": p.dims(), "role": "shared"})).collect();
    let case = serde_json::json!({
        "case": "joint-by-hand", "format_version": 1, "kind": "method_steps", "dtype": "float64",
        "method": "joint", "method_config": {},
        "modalities": ["audio", "visual"],
        "sizes": {"batch": b, "classes": c, "hidden": h, "input_dims": [d, d], "epochs": 1, "steps_per_epoch": 2},
        "optimizer": {"kind": "sgd", "lr": 0.5, "momentum": 0.0, "weight_decay": 0.0},
        "parameters": parameters, "steps": steps,
    });
    std::fs::write(dir.join("case.json"), serde_json::to_string_pretty(&case).unwrap()).unwrap();
    candle_core::safetensors::save(&tensors, dir.join("tensors.safetensors")).unwrap();
}
