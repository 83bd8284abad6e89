//! What a replay found, and the comparison rules of FORMAT.md §6.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use candle_core::{DType, Tensor};

use super::TOLERANCE;

/// The largest error seen in one group of compared values.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupSummary {
    /// How many tensors (or scalars) of the group were compared.
    pub compared: usize,
    /// The largest error (infinite for a missing or mis-shaped value; see [`Failure::err`] for
    /// integers, booleans and exact values).
    pub max_err: f64,
    /// The key that has it.
    pub worst_key: String,
}

/// One value outside the tolerance.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    /// The tensor key (`step2/grad_final/net.head.fc.weight`) or the case.json location of the
    /// scalar (`steps[1].coeff.audio`).
    pub key: String,
    /// The error: relative per FORMAT.md §6 for floats, the largest absolute difference for
    /// integer tensors, 1 for a boolean or exact value that differs, infinite where nothing could
    /// be compared (a value not computed, a shape that differs) or the error is NaN.
    pub err: f64,
    /// What was expected and what was computed, or why nothing could be compared.
    pub detail: String,
}

/// The outcome of one case.
#[derive(Clone, Debug, Default)]
pub struct CaseReport {
    /// `case` from case.json (the folder name when absent).
    pub case: String,
    /// `kind` from case.json: `train_steps`, `method_steps`, `epoch_schedule` or
    /// `competition_strength`.
    pub kind: String,
    /// The method of a `train_steps` or `method_steps` case.
    pub method: Option<String>,
    /// Tensors compared, within tolerance or not.
    pub tensors_compared: usize,
    /// Scalars (floats, booleans, exact JSON values) compared, within tolerance or not.
    pub scalars_compared: usize,
    /// By group: the tensor key without its step and last component (`grad_final`, `pass`,
    /// `feature`), or `scalar:<field>`.
    pub groups: BTreeMap<String, GroupSummary>,
    /// Every compared value outside the tolerance, in the order compared.
    pub failures: Vec<Failure>,
    /// Tensor keys and case.json fields the runner did not compare (FORMAT.md: informational).
    pub informational: Vec<String>,
}

impl CaseReport {
    /// True when something was compared and every compared value is within tolerance.
    pub fn passed(&self) -> bool {
        self.failures.is_empty() && self.tensors_compared + self.scalars_compared > 0
    }

    /// How many keys and fields were left uncompared ([`CaseReport::informational`]).
    pub fn informational_count(&self) -> usize {
        self.informational.len()
    }

    /// The largest error of a group, if the group was compared.
    pub fn max_err(&self, group: &str) -> Option<f64> {
        self.groups.get(group).map(|g| g.max_err)
    }

    fn record(&mut self, group: &str, key: &str, err: f64) {
        let err = if err.is_nan() { f64::INFINITY } else { err };
        let g = self.groups.entry(group.to_string()).or_insert_with(|| GroupSummary {
            compared: 0,
            max_err: 0.0,
            worst_key: key.to_string(),
        });
        g.compared += 1;
        if err > g.max_err {
            g.max_err = err;
            g.worst_key = key.to_string();
        }
    }

    fn fail(&mut self, key: &str, err: f64, detail: impl Into<String>) {
        let err = if err.is_nan() { f64::INFINITY } else { err };
        self.failures.push(Failure { key: key.to_string(), err, detail: detail.into() });
    }

    pub(super) fn note(&mut self, what: impl Into<String>) {
        self.informational.push(what.into());
    }
}

impl fmt::Display for CaseReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match &self.method {
            Some(m) => format!("{}, {m}", self.kind),
            None => self.kind.clone(),
        };
        write!(
            f,
            "{} ({what}): {} tensors, {} scalars compared — {}",
            self.case,
            self.tensors_compared,
            self.scalars_compared,
            if self.passed() { "PASS" } else { "FAIL" }
        )?;
        let width = self.groups.keys().map(String::len).max().unwrap_or(0);
        for (name, g) in &self.groups {
            write!(
                f,
                "\n  {name:<width$}  max err {:.3e}  ({} compared, worst {})",
                g.max_err, g.compared, g.worst_key
            )?;
        }
        const SHOWN: usize = 20;
        for fl in self.failures.iter().take(SHOWN) {
            write!(f, "\n  FAIL {}: err {:.3e}: {}", fl.key, fl.err, fl.detail)?;
        }
        if self.failures.len() > SHOWN {
            write!(f, "\n  ... and {} more failures", self.failures.len() - SHOWN)?;
        }
        write!(f, "\n  informational (not compared): {}", self.informational.len())
    }
}

/// Expected values as plain numbers, with the §6 floor G per key prefix.
pub(super) struct Checker {
    pub report: CaseReport,
    /// Largest |value| over the expected float tensors sharing a prefix.
    prefix_max: HashMap<String, f64>,
}

/// The prefix whose tensors share one G: the key without its last component when the key has a
/// sub-folder under its step (`step3/grad_final`), otherwise the key itself (`step3/out`).
pub(super) fn g_prefix(key: &str) -> &str {
    if key.matches('/').count() >= 2 {
        &key[..key.rfind('/').unwrap_or(key.len())]
    } else {
        key
    }
}

/// The report group of a tensor key: without the step and the last component, or the remaining
/// component when there is only one (`step3/out` → `out`).
pub(super) fn tensor_group(key: &str) -> &str {
    let rest = key.split_once('/').map_or(key, |(_, r)| r);
    match rest.rfind('/') {
        Some(i) => &rest[..i],
        None => rest,
    }
}

pub(super) fn values(t: &Tensor) -> candle_core::Result<Vec<f64>> {
    t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0f64, |a, x| if x.is_nan() { f64::NAN } else { a.max(x.abs()) })
}

impl Checker {
    /// `expected` are the float tensors whose prefixes define G (integers are compared exactly
    /// and take no part in it).
    pub fn new(report: CaseReport, expected: &HashMap<String, Tensor>) -> candle_core::Result<Self> {
        let mut prefix_max: HashMap<String, f64> = HashMap::new();
        for (key, t) in expected {
            if !t.dtype().is_float() {
                continue;
            }
            let m = max_abs(&values(t)?);
            let e = prefix_max.entry(g_prefix(key).to_string()).or_insert(0.0);
            *e = e.max(m);
        }
        Ok(Self { report, prefix_max })
    }

    /// Compares an expected tensor with the computed one (`None`: not computed).
    pub fn tensor(&mut self, key: &str, expected: &Tensor, computed: Option<&Tensor>) -> candle_core::Result<()> {
        let group = tensor_group(key).to_string();
        self.report.tensors_compared += 1;
        let Some(computed) = computed else {
            self.report.record(&group, key, f64::INFINITY);
            self.report.fail(key, f64::INFINITY, "stored in the case but the replay did not compute it");
            return Ok(());
        };
        if expected.dims() != computed.dims() {
            self.report.record(&group, key, f64::INFINITY);
            self.report.fail(
                key,
                f64::INFINITY,
                format!("expected shape {:?}, computed {:?}", expected.dims(), computed.dims()),
            );
            return Ok(());
        }
        let x = values(expected)?;
        let y = values(computed)?;
        let diff = x.iter().zip(&y).fold(0.0f64, |a, (x, y)| {
            let d = (x - y).abs();
            if d.is_nan() || a.is_nan() {
                f64::NAN
            } else {
                a.max(d)
            }
        });
        if !expected.dtype().is_float() {
            // Integers (num_batches_tracked): exact.
            self.report.record(&group, key, diff);
            if diff != 0.0 {
                self.report.fail(key, diff, format!("integer mismatch: expected {x:?}, computed {y:?}"));
            }
            return Ok(());
        }
        let g = self.prefix_max.get(g_prefix(key)).copied().unwrap_or(0.0);
        let denom = max_abs(&x).max(1e-3 * g);
        let err = if diff == 0.0 { 0.0 } else { diff / denom };
        self.report.record(&group, key, err);
        if err.is_nan() || err > TOLERANCE {
            self.report.fail(key, err, format!("max |expected − computed| = {diff:e}, scale {denom:e}"));
        }
        Ok(())
    }

    /// A float scalar, compared relatively.
    pub fn float(&mut self, field: &str, key: &str, expected: f64, computed: Option<f64>) {
        let group = format!("scalar:{field}");
        self.report.scalars_compared += 1;
        let Some(y) = computed else {
            self.report.record(&group, key, f64::INFINITY);
            self.report.fail(key, f64::INFINITY, format!("expected {expected:e}, the replay did not compute it"));
            return;
        };
        let err = if expected == y { 0.0 } else { (expected - y).abs() / expected.abs() };
        self.report.record(&group, key, err);
        if err.is_nan() || err > TOLERANCE {
            self.report.fail(key, err, format!("expected {expected:e}, computed {y:e}"));
        }
    }

    /// A boolean, compared exactly (err 0 or 1).
    pub fn flag(&mut self, field: &str, key: &str, expected: bool, computed: Option<bool>) {
        let group = format!("scalar:{field}");
        self.report.scalars_compared += 1;
        let err = if computed == Some(expected) { 0.0 } else { 1.0 };
        self.report.record(&group, key, err);
        if err != 0.0 {
            self.report.fail(key, err, format!("expected {expected}, computed {computed:?}"));
        }
    }

    /// Any JSON value (a list of names, an integer), compared exactly (err 0 or 1).
    pub fn exact(
        &mut self,
        field: &str,
        key: &str,
        expected: &serde_json::Value,
        computed: Option<&serde_json::Value>,
    ) {
        let group = format!("scalar:{field}");
        self.report.scalars_compared += 1;
        let err = if computed == Some(expected) { 0.0 } else { 1.0 };
        self.report.record(&group, key, err);
        if err != 0.0 {
            let got = computed.map_or_else(|| "nothing".to_string(), ToString::to_string);
            self.report.fail(key, err, format!("expected {expected}, computed {got}"));
        }
    }

    /// Something the case must hold is missing or malformed.
    pub fn missing(&mut self, key: &str, detail: impl Into<String>) {
        self.report.fail(key, f64::INFINITY, detail);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_and_prefixes() {
        assert_eq!(tensor_group("step3/grad_final/net.head.fc.weight"), "grad_final");
        assert_eq!(tensor_group("step3/out"), "out");
        assert_eq!(tensor_group("step12/pass/keep_av"), "pass");
        assert_eq!(g_prefix("step3/grad_final/net.head.fc.weight"), "step3/grad_final");
        assert_eq!(g_prefix("step3/feature"), "step3/feature");
    }

    #[test]
    fn floor_uses_the_largest_tensor_of_the_prefix() {
        let dev = candle_core::Device::Cpu;
        let big = Tensor::new(&[1000.0f64, -2000.0], &dev).unwrap();
        let tiny = Tensor::new(&[1e-16f64, 0.0], &dev).unwrap();
        let expected: HashMap<String, Tensor> =
            [("s1/g/a".to_string(), big.clone()), ("s1/g/b".to_string(), tiny.clone())].into_iter().collect();
        let mut c = Checker::new(CaseReport::default(), &expected).unwrap();
        // Noise of 1e-13 on a near-zero tensor is judged against 1e-3·2000 = 2.
        let noisy = Tensor::new(&[1e-13f64, 0.0], &dev).unwrap();
        c.tensor("s1/g/b", &tiny, Some(&noisy)).unwrap();
        assert!(c.report.failures.is_empty());
        let off = Tensor::new(&[1000.0f64 * (1.0 + 1e-9), -2000.0], &dev).unwrap();
        c.tensor("s1/g/a", &big, Some(&off)).unwrap();
        assert_eq!(c.report.failures.len(), 1);
        assert_eq!(c.report.failures[0].key, "s1/g/a");
        let nan = Tensor::new(&[f64::NAN, 0.0], &dev).unwrap();
        c.tensor("s1/g/b", &tiny, Some(&nan)).unwrap();
        assert_eq!(c.report.failures.len(), 2);
        assert_eq!(c.report.tensors_compared, 3);
    }

    #[test]
    fn scalars_are_relative_and_flags_exact() {
        let mut c = Checker::new(CaseReport::default(), &HashMap::new()).unwrap();
        c.float("coeff", "steps[0].coeff.a", 1e-56, Some(1e-56 * (1.0 + 1e-12)));
        c.flag("clip_fired", "steps[0].clip_fired", true, Some(true));
        assert!(c.report.failures.is_empty());
        c.float("coeff", "steps[0].coeff.b", 1e-56, Some(1.1e-56));
        c.flag("clip_fired", "steps[1].clip_fired", true, Some(false));
        c.float("loss", "steps[1].loss", 1.0, None);
        let keys: Vec<_> = c.report.failures.iter().map(|f| f.key.as_str()).collect();
        assert_eq!(keys, ["steps[0].coeff.b", "steps[1].clip_fired", "steps[1].loss"]);
        assert_eq!(c.report.scalars_compared, 5);
    }
}
