//! Kind `competition_strength` (FORMAT.md §2): fits each modality's ridge on `dep/*` and
//! measures on `test/*` through [`agm_metric::competition::replay_case`], the same code the
//! per-epoch probe runs, then compares every stored tensor (§6 rule) and every stored result.
//!
//! `r_official` is held to 1e-10 like the rest: the replay reproduces the reference's float32
//! rounding of the predictions.

use std::collections::HashMap;
use std::path::Path;

use agm_metric::competition::{replay_case, ReplayError};
use candle_core::Tensor;
use serde_json::Value;

use super::report::{CaseReport, Checker};
use super::ParityError;

pub(super) fn run(
    case_path: &Path,
    tensors_path: &Path,
    json: &Value,
    tensors: &HashMap<String, Tensor>,
) -> Result<CaseReport, ParityError> {
    let replay = replay_case(json, tensors).map_err(|e| match e {
        ReplayError::Case(m) => {
            ParityError::invalid(case_path, format!("not a valid `competition_strength` case: {m}"))
        }
        ReplayError::Tensors(m) => ParityError::invalid(tensors_path, m),
    })?;
    let name = super::case_name(json, case_path);
    let report = CaseReport { case: name, kind: "competition_strength".into(), ..CaseReport::default() };
    let mut chk = Checker::new(report, tensors).map_err(|e| ParityError::invalid(tensors_path, e.to_string()))?;
    for (key, computed) in &replay.tensors {
        match tensors.get(key) {
            Some(expected) => chk
                .tensor(key, expected, Some(computed))
                .map_err(|e| ParityError::invalid(tensors_path, format!("`{key}`: {e}")))?,
            None => chk.missing(key, "FORMAT.md §2 lists this tensor but tensors.safetensors does not hold it"),
        }
    }
    for s in &replay.scalars {
        chk.float(&s.field, &s.key, s.expected, Some(s.computed));
    }
    for note in replay.informational {
        chk.report.note(note);
    }
    Ok(chk.report)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/golden/competition")
    }

    fn load() -> (Value, HashMap<String, Tensor>) {
        let json = serde_json::from_str(&std::fs::read_to_string(fixture().join("case.json")).unwrap()).unwrap();
        let tensors =
            candle_core::safetensors::load(fixture().join("tensors.safetensors"), &candle_core::Device::Cpu).unwrap();
        (json, tensors)
    }

    #[test]
    fn the_golden_case_passes_and_every_result_is_compared() {
        let (json, tensors) = load();
        let report =
            run(&fixture().join("case.json"), &fixture().join("tensors.safetensors"), &json, &tensors).unwrap();
        assert!(report.passed(), "{report}");
        assert_eq!(report.tensors_compared, 12, "{report}");
        assert_eq!(report.scalars_compared, 10, "{report}");
        assert!(report.max_err("scalar:r_official").is_some_and(|e| e <= 1e-10), "{report}");
    }

    #[test]
    fn a_wrong_stored_value_fails_and_is_named() {
        let (mut json, tensors) = load();
        let r = &mut json["results"]["audio"]["r_official"];
        *r = (r.as_f64().unwrap() * (1.0 + 1e-9)).into();
        let report =
            run(&fixture().join("case.json"), &fixture().join("tensors.safetensors"), &json, &tensors).unwrap();
        assert!(!report.passed(), "{report}");
        let keys: Vec<&str> = report.failures.iter().map(|f| f.key.as_str()).collect();
        assert_eq!(keys, ["results.audio.r_official"], "{report}");
    }

    #[test]
    fn a_missing_tensor_names_the_tensors_file() {
        let (json, mut tensors) = load();
        tensors.remove("test/feature");
        let path = fixture().join("tensors.safetensors");
        let err = run(&fixture().join("case.json"), &path, &json, &tensors).unwrap_err().to_string();
        assert!(err.contains("tensors.safetensors") && err.contains("test/feature"), "{err}");
    }
}
