//! Kind `epoch_schedule` (FORMAT.md §3): the MSLR and MSES bookkeeping on replayed per-epoch
//! inputs.
//!
//! The golden runs stub out training: "training" epoch `e` returns the running scores
//! `train_score_<m>[e]` and tags the model with `e`, and evaluation returns `acc_<m>[e]` and
//! `loss_<m>[e]`. The runner does the same around the real bookkeeping
//! ([`MslrSchedule::end_epoch`], [`MsesSchedule::end_epoch`], the functions the modulators call
//! at the end of an epoch) and carries out the [`EpochAction`]s it returns on a stand-in for the
//! trainer's state: a snapshot keeps the model tag and the running scores, a restore brings them
//! back, a stop ends the run. Every field of every `epochs[j]` is compared; the reference's
//! checkpoint file names are derived from the improvements and restores the bookkeeping reports.
//!
//! A run may give `modulation_window_epochs: [start, end]` (agm's extension of FORMAT.md §3, the
//! official `--modulation_starts` / `--modulation_ends` it ran with; absent: the whole run):
//! outside it the official `train()` applies no multiplier, so `grad_multiplier` is 1 there.
//!
//! A run that ended in an official error (run 3: FileNotFoundError, AV-MNIST's reload of a
//! checkpoint never written) is compared on the epochs before the error; the runner then checks
//! that ours continues through the remaining inputs without error (the documented difference,
//! `docs/known-differences.md`).

use std::collections::HashMap;
use std::path::Path;

use agm_modulation::{EpochAction, FirstEpochPolicy, MsesConfig, MsesSchedule, MslrConfig, MslrSchedule};
use candle_core::{Device, Tensor};
use serde_json::{Map, Value};

use super::report::{CaseReport, Checker};
use super::ParityError;

/// Top-level fields this runner uses; every other one is informational.
const USED_FIELDS: &[&str] = &["case", "format_version", "kind", "dtype", "runs"];
/// Fields of `runs[i]` this runner uses.
const USED_RUN_FIELDS: &[&str] = &[
    "run",
    "dataset",
    "method",
    "modalities",
    "init_multiplier",
    "patience",
    "inputs",
    "epochs",
    "error",
    "modulation_window_epochs",
];
/// The MSLR memory length of FORMAT.md §3.3.
const MSLR_WINDOW: usize = 5;

/// The reference's checkpoint file name for epoch `e`.
fn ckpt_name(e: usize) -> String {
    format!("ckpt_full_epoch{e}.pth.tar")
}

/// What one replayed epoch computed.
#[derive(Debug, Default)]
struct EpochRecord {
    ratio_during: Vec<f64>,
    multiplier_during: Vec<f64>,
    running_passed_in: Vec<f64>,
    tag_during: usize,
    ratio_after: Vec<f64>,
    /// MSLR: the memory per modality.
    memory: Vec<Vec<f64>>,
    /// MSES: smoothed loss, its minimum and the epoch of the minimum per modality.
    smoothed: Vec<f64>,
    min: Vec<f64>,
    argmin: Vec<usize>,
    saved: Vec<String>,
    loaded: Vec<String>,
    running_after: Vec<f64>,
    exit: bool,
}

enum Bookkeeping {
    Mslr(MslrSchedule, MslrConfig),
    Mses(MsesSchedule, MsesConfig),
}

/// A stand-in for the trainer around the bookkeeping.
struct Stub {
    tag: usize,
    running: Vec<f64>,
    snapshots: HashMap<String, (usize, Vec<f64>)>,
}

pub(super) fn run(
    case_path: &Path,
    tensors_path: &Path,
    json: &Value,
    tensors: &HashMap<String, Tensor>,
) -> Result<CaseReport, ParityError> {
    let invalid = |m: String| ParityError::invalid(case_path, m);
    let obj = json.as_object().ok_or_else(|| invalid("the top level must be a JSON object".into()))?;
    if let Some(d) = obj.get("dtype") {
        if d.as_str() != Some("float64") {
            return Err(invalid(format!("dtype {d} is not supported (only float64)")));
        }
    }
    let name = super::case_name(json, case_path);
    let mut report = CaseReport { case: name, kind: "epoch_schedule".into(), ..CaseReport::default() };
    for k in obj.keys().filter(|k| !USED_FIELDS.contains(&k.as_str())) {
        report.note(format!("case.json: {k}"));
    }
    let runs = obj.get("runs").and_then(Value::as_array).ok_or_else(|| invalid("missing array field `runs`".into()))?;
    if runs.is_empty() {
        return Err(invalid("runs is empty: nothing to replay".into()));
    }
    let mut chk = Checker::new(report, tensors).map_err(|e| ParityError::invalid(tensors_path, e.to_string()))?;
    let mut run_names = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        let run_name = replay_run(case_path, tensors_path, &mut chk, i, run, tensors)?;
        run_names.push(run_name);
    }
    let mut unused: Vec<&String> = tensors
        .keys()
        .filter(|k| !run_names.iter().any(|r| k.strip_prefix(r.as_str()).is_some_and(|rest| rest.starts_with('/'))))
        .collect();
    unused.sort();
    for k in unused {
        chk.report.note(format!("tensors: {k}"));
    }
    Ok(chk.report)
}

/// Reads a run, replays it and compares it; returns the run's name (its tensor prefix).
fn replay_run(
    case_path: &Path,
    tensors_path: &Path,
    chk: &mut Checker,
    i: usize,
    run: &Value,
    tensors: &HashMap<String, Tensor>,
) -> Result<String, ParityError> {
    let at = |f: &str| format!("runs[{i}].{f}");
    let invalid = |m: String| ParityError::invalid(case_path, m);
    let run = run.as_object().ok_or_else(|| invalid(format!("runs[{i}] must be an object")))?;
    let run_name = run.get("run").and_then(Value::as_str).map(String::from).unwrap_or_else(|| format!("run{}", i + 1));
    for k in run.keys().filter(|k| !USED_RUN_FIELDS.contains(&k.as_str())) {
        chk.report.note(format!("case.json: {}", at(k)));
    }
    let text = |f: &str| {
        run.get(f).and_then(Value::as_str).ok_or_else(|| invalid(format!("{}: missing or not a string", at(f))))
    };
    let method = text("method")?;
    let dataset = text("dataset")?;
    let modalities: Vec<String> = run
        .get("modalities")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
        .filter(|v: &Vec<String>| !v.is_empty())
        .ok_or_else(|| invalid(format!("{}: missing or not a list of names", at("modalities"))))?;
    let m = modalities.len();
    let per_mod_numbers = |f: &str| -> Result<Vec<f64>, ParityError> {
        let map = run.get(f).and_then(Value::as_object).ok_or_else(|| invalid(format!("{}: missing object", at(f))))?;
        modalities
            .iter()
            .map(|x| {
                map.get(x).and_then(Value::as_f64).ok_or_else(|| invalid(format!("{}.{x}: missing number", at(f))))
            })
            .collect()
    };
    let inputs = run
        .get("inputs")
        .and_then(Value::as_object)
        .ok_or_else(|| invalid(format!("{}: missing object", at("inputs"))))?;
    let seq = |s: &str| -> Result<Vec<f64>, ParityError> {
        inputs
            .get(s)
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(Value::as_f64).collect::<Option<Vec<f64>>>())
            .ok_or_else(|| invalid(format!("{}.{s}: missing list of numbers", at("inputs"))))
    };
    let metric = if method == "MSLR" { "acc" } else { "loss" };
    let train_score: Vec<Vec<f64>> =
        modalities.iter().map(|x| seq(&format!("train_score_{x}"))).collect::<Result<_, _>>()?;
    let measured: Vec<Vec<f64>> = modalities.iter().map(|x| seq(&format!("{metric}_{x}"))).collect::<Result<_, _>>()?;
    let n = train_score[0].len();
    if train_score.iter().chain(&measured).any(|s| s.len() != n) || n == 0 {
        return Err(invalid(format!(
            "{}: the per-modality sequences must be non-empty and of one length",
            at("inputs")
        )));
    }
    let (window_start, window_end) = match run.get("modulation_window_epochs") {
        None | Some(Value::Null) => (0, None),
        Some(v) => match v.as_array().map(|a| a.iter().map(Value::as_u64).collect::<Vec<_>>()).as_deref() {
            Some([Some(start), Some(end)]) => (*start as usize, Some(*end as usize)),
            _ => return Err(invalid(format!("{}: must be [start, end], two epochs", at("modulation_window_epochs")))),
        },
    };
    let mut book = match method {
        "MSLR" => {
            let cfg =
                MslrConfig { init: per_mod_numbers("init_multiplier")?, window: MSLR_WINDOW, window_start, window_end };
            let schedule =
                MslrSchedule::new(&cfg, m).map_err(|e| invalid(format!("{}: {e}", at("init_multiplier"))))?;
            Bookkeeping::Mslr(schedule, cfg)
        }
        "MSES" => {
            if per_mod_numbers("init_multiplier")?.iter().any(|&v| v != 1.0) {
                return Err(invalid(format!("{}: MSES multipliers start at 1.0", at("init_multiplier"))));
            }
            let patience = run
                .get("patience")
                .and_then(Value::as_u64)
                .ok_or_else(|| invalid(format!("{}: MSES needs a non-negative integer", at("patience"))))?;
            let best_at_first_epoch = match dataset {
                "urfunny" => FirstEpochPolicy::Skip,
                "avmnist" | "cremad" => FirstEpochPolicy::Restore,
                other => {
                    return Err(invalid(format!(
                        "{}: `{other}` is not supported for MSES (allowed: avmnist, cremad, urfunny)",
                        at("dataset")
                    )))
                }
            };
            let cfg = MsesConfig { patience: patience as usize, best_at_first_epoch, window_start, window_end };
            Bookkeeping::Mses(MsesSchedule::new(&cfg, m).map_err(|e| invalid(format!("runs[{i}]: {e}")))?, cfg)
        }
        other => return Err(invalid(format!("{}: `{other}` is not known (allowed: MSLR, MSES)", at("method")))),
    };
    let golden: Vec<&Map<String, Value>> = run
        .get("epochs")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().map(Value::as_object).collect::<Option<Vec<_>>>())
        .ok_or_else(|| invalid(format!("{}: missing list of objects", at("epochs"))))?;
    let official_error = run.get("error").filter(|v| !v.is_null());

    // The replay.
    let mut stub = Stub { tag: 0, running: vec![0.0; m], snapshots: HashMap::new() };
    let mut records: Vec<EpochRecord> = Vec::new();
    let mut replay_error: Option<String> = None;
    for e in 1..=n {
        let mut rec =
            EpochRecord { tag_during: stub.tag, running_passed_in: stub.running.clone(), ..Default::default() };
        let (ratio, mult) = match &book {
            Bookkeeping::Mslr(s, cfg) if cfg.in_window(e) => (s.ratios().to_vec(), s.multipliers()),
            Bookkeeping::Mses(s, cfg) if cfg.in_window(e) => (s.ratios().to_vec(), s.ratios().to_vec()),
            Bookkeeping::Mslr(s, _) => (s.ratios().to_vec(), vec![1.0; m]),
            Bookkeeping::Mses(s, _) => (s.ratios().to_vec(), vec![1.0; m]),
        };
        rec.ratio_during = ratio;
        rec.multiplier_during = mult;
        stub.tag = e;
        stub.running = train_score.iter().map(|s| s[e - 1]).collect();
        let values: Vec<f64> = measured.iter().map(|s| s[e - 1]).collect();
        let actions = match &mut book {
            Bookkeeping::Mslr(s, _) => {
                s.end_epoch(&values).map_err(|e| invalid(format!("runs[{i}]: {e}")))?;
                rec.ratio_after = s.ratios().to_vec();
                rec.memory = (0..m).map(|x| s.memory(x)).collect();
                Vec::new()
            }
            Bookkeeping::Mses(s, _) => {
                let update = s.end_epoch(e, &values).map_err(|e| invalid(format!("runs[{i}]: {e}")))?;
                rec.ratio_after = s.ratios().to_vec();
                rec.smoothed = s.smoothed_loss().to_vec();
                rec.min = s.min_smoothed_loss().to_vec();
                rec.argmin = s.argmin_epoch().to_vec();
                rec.saved = update.improved.iter().filter(|&&b| b).map(|_| ckpt_name(e)).collect();
                rec.loaded = update.stopped.iter().filter(|s| s.2).map(|s| ckpt_name(s.1)).collect();
                update.actions
            }
        };
        for action in actions {
            match action {
                EpochAction::SaveSnapshot(tag) => {
                    stub.snapshots.insert(tag, (stub.tag, stub.running.clone()));
                }
                EpochAction::RestoreSnapshot(tag) => match stub.snapshots.get(&tag) {
                    Some((t, r)) => {
                        stub.tag = *t;
                        stub.running = r.clone();
                    }
                    None => replay_error = Some(format!("epoch {e}: restore of snapshot `{tag}`, never saved")),
                },
                EpochAction::Stop => rec.exit = true,
                // MSLR and MSES never reset the optimizer; the stub has none.
                EpochAction::ResetOptimizer | EpochAction::Note(_) => {}
            }
        }
        rec.running_after = stub.running.clone();
        let exit = rec.exit;
        records.push(rec);
        if exit || replay_error.is_some() {
            break;
        }
    }

    // The comparison.
    let loc = |j: usize| format!("{run_name}.epochs[{j}]");
    for (j, g) in golden.iter().enumerate() {
        let Some(rec) = records.get(j) else {
            chk.missing(&loc(j), format!("the replay ended after {} epochs", records.len()));
            continue;
        };
        compare_epoch(chk, &loc(j), j, g, rec, &modalities);
    }
    match official_error {
        None => {
            if records.len() > golden.len() {
                chk.missing(
                    &format!("{run_name}.epochs"),
                    format!("the reference ran {} epochs, the replay {}", golden.len(), records.len()),
                );
            }
        }
        Some(err) => {
            let during = err.get("during_epoch").and_then(Value::as_u64).unwrap_or(golden.len() as u64 + 1);
            let kind = err.get("type").and_then(Value::as_str).unwrap_or("an error");
            let went_on = replay_error.is_none() && records.len() as u64 >= during;
            chk.flag("continues_after_official_error", &format!("{run_name}.error"), true, Some(went_on));
            chk.report.note(format!(
                "{run_name}: the official code raised {kind} during epoch {during}; compared the {} epochs before it, \
                 ours continued through epoch {} (documented difference)",
                golden.len(),
                records.len()
            ));
        }
    }
    if let Some(e) = &replay_error {
        chk.missing(&format!("{run_name}.replay"), e.clone());
    }

    // Tensors of this run.
    let prefix = format!("{run_name}/");
    let mut keys: Vec<&String> = tensors.keys().filter(|k| k.starts_with(&prefix)).collect();
    keys.sort();
    for key in keys {
        let rest = &key[prefix.len()..];
        let computed: Option<Vec<f64>> = match rest.split('/').collect::<Vec<_>>().as_slice() {
            ["input", s] => seq(s).ok(),
            ["expected", what, x] => modalities.iter().position(|mm| mm == x).and_then(|xi| {
                let len = tensors[key].elem_count().min(records.len());
                let pick = |r: &EpochRecord| match *what {
                    "lr_ratio_after_update" => Some(r.ratio_after[xi]),
                    "grad_multiplier_during_epoch" => Some(r.multiplier_during[xi]),
                    _ => None,
                };
                records[..len].iter().map(pick).collect()
            }),
            _ => None,
        };
        match computed {
            Some(v) => {
                let t = Tensor::new(v.as_slice(), &Device::Cpu)
                    .map_err(|e| ParityError::invalid(tensors_path, e.to_string()))?;
                chk.tensor(key, &tensors[key], Some(&t))
                    .map_err(|e| ParityError::invalid(tensors_path, format!("`{key}`: {e}")))?;
            }
            None => chk.report.note(format!("tensors: {key}")),
        }
    }
    Ok(run_name)
}

/// An integer stored as a JSON number (the reference writes epochs as floats: `1.0`).
fn integer(chk: &mut Checker, field: &str, key: &str, v: &Value, computed: Option<usize>) {
    match v.as_f64().filter(|x| x.fract() == 0.0 && *x >= 0.0) {
        Some(x) => chk.exact(field, key, &Value::from(x as u64), computed.map(|c| Value::from(c as u64)).as_ref()),
        None => chk.missing(key, format!("expected a non-negative integer in case.json, found {v}")),
    }
}

fn float(chk: &mut Checker, field: &str, key: &str, v: &Value, computed: Option<f64>) {
    match v.as_f64() {
        Some(x) => chk.float(field, key, x, computed),
        None => chk.missing(key, format!("expected a number in case.json, found {v}")),
    }
}

/// A `{modality: number}` map.
fn per_modality(chk: &mut Checker, field: &str, key: &str, v: &Value, modalities: &[String], computed: &[f64]) {
    let Some(map) = v.as_object() else {
        chk.missing(key, format!("expected a {{modality: value}} object in case.json, found {v}"));
        return;
    };
    for (x, name) in modalities.iter().enumerate() {
        match map.get(name) {
            Some(val) => float(chk, field, &format!("{key}.{name}"), val, computed.get(x).copied()),
            None => chk.missing(&format!("{key}.{name}"), "modality missing from the case.json map"),
        }
    }
}

fn strings(v: &[String]) -> Value {
    Value::from(v.to_vec())
}

fn compare_epoch(
    chk: &mut Checker,
    loc: &str,
    j: usize,
    g: &Map<String, Value>,
    rec: &EpochRecord,
    modalities: &[String],
) {
    let expected_exit = g.get("exit_here").and_then(Value::as_bool).unwrap_or(false);
    chk.flag("exit_here", &format!("{loc}.exit_here"), expected_exit, Some(rec.exit));
    for (field, v) in g {
        let key = format!("{loc}.{field}");
        match field.as_str() {
            "epoch" => integer(chk, "epoch", &key, v, Some(j + 1)),
            "exit_here" => {}
            "during_epoch" => {
                let Some(d) = v.as_object() else {
                    chk.missing(&key, "expected an object");
                    continue;
                };
                for (f, dv) in d {
                    let dkey = format!("{key}.{f}");
                    match f.as_str() {
                        "lr_ratio" => per_modality(chk, "during.lr_ratio", &dkey, dv, modalities, &rec.ratio_during),
                        "grad_multiplier" => {
                            per_modality(chk, "during.grad_multiplier", &dkey, dv, modalities, &rec.multiplier_during)
                        }
                        "running_score_passed_in" => per_modality(
                            chk,
                            "during.running_score_passed_in",
                            &dkey,
                            dv,
                            modalities,
                            &rec.running_passed_in,
                        ),
                        "model_restored_from_epoch_tag" => {
                            integer(chk, "during.model_restored_from_epoch_tag", &dkey, dv, Some(rec.tag_during))
                        }
                        _ => chk.report.note(format!("case.json: {dkey}")),
                    }
                }
            }
            "after_update" => {
                for (x, name) in modalities.iter().enumerate() {
                    let mkey = format!("{key}.{name}");
                    let Some(a) = v.get(name).and_then(Value::as_object) else {
                        chk.missing(&mkey, "modality missing from after_update");
                        continue;
                    };
                    for (f, av) in a {
                        let fkey = format!("{mkey}.{f}");
                        match f.as_str() {
                            "lr_ratio" => float(chk, "after.lr_ratio", &fkey, av, rec.ratio_after.get(x).copied()),
                            "smoothed_loss" => {
                                float(chk, "after.smoothed_loss", &fkey, av, rec.smoothed.get(x).copied())
                            }
                            "min_smoothed_loss" => {
                                float(chk, "after.min_smoothed_loss", &fkey, av, rec.min.get(x).copied())
                            }
                            "argmin_epoch" => integer(chk, "after.argmin_epoch", &fkey, av, rec.argmin.get(x).copied()),
                            "memory" => {
                                let ours = rec.memory.get(x).cloned().unwrap_or_default();
                                let Some(list) = av.as_array() else {
                                    chk.missing(&fkey, "expected a list of numbers");
                                    continue;
                                };
                                chk.exact(
                                    "after.memory_length",
                                    &format!("{fkey}.len"),
                                    &Value::from(list.len()),
                                    Some(&Value::from(ours.len())),
                                );
                                for (p, item) in list.iter().enumerate() {
                                    float(chk, "after.memory", &format!("{fkey}[{p}]"), item, ours.get(p).copied());
                                }
                            }
                            _ => chk.report.note(format!("case.json: {fkey}")),
                        }
                    }
                }
                if let Some(extra) = v.as_object() {
                    for k in extra.keys().filter(|k| !modalities.contains(k)) {
                        chk.report.note(format!("case.json: {key}.{k}"));
                    }
                }
            }
            "checkpoints_saved" => chk.exact("checkpoints_saved", &key, v, Some(&strings(&rec.saved))),
            "checkpoints_loaded" => chk.exact("checkpoints_loaded", &key, v, Some(&strings(&rec.loaded))),
            "running_scores_after_update" => {
                per_modality(chk, "running_scores_after_update", &key, v, modalities, &rec.running_after)
            }
            _ => chk.report.note(format!("case.json: {key}")),
        }
    }
}
