//! Golden parity: the real training step replays the official AGM runs (FORMAT.md).

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
fn agm3_matches_the_official_run() {
    let report = run_case(&fixture("agm3")).unwrap();
    println!("{report}");
    assert!(report.passed(), "{report}");
    // 14 parameters, 9 buffers, 8 passes (keep_none included), 3 modalities, 6 steps.
    assert_groups(&report, 6, 14, 9, 8, 3);
    assert!(report.groups.contains_key("scalar:clamp_fired"), "{report}");
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
    for (kind, expect) in [
        ("competition_strength", "kind `competition_strength` is not implemented yet"),
        ("epoch_schedule", "kind `epoch_schedule` is not implemented yet"),
        ("train_wheels", "unknown kind `train_wheels`"),
    ] {
        edit_json(dir.path(), |v| v["kind"] = kind.into());
        let err = run_case(dir.path()).unwrap_err();
        assert!(err.to_string().contains(expect), "{err}");
    }

    edit_json(dir.path(), |v| v["kind"] = "train_steps".into());
    edit_json(dir.path(), |v| v["method"] = "OGM-GE".into());
    let err = run_case(dir.path()).unwrap_err();
    assert!(matches!(err, ParityError::MethodNotImplemented { .. }), "{err}");
    assert!(err.to_string().contains("method `OGM-GE` is not implemented yet"), "{err}");

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
