//! Competition strength: how much of a modality's mono-modal concept the fused feature of a
//! multimodal model still carries (the metric of the AGM paper; golden case `competition`,
//! tests/fixtures/golden/FORMAT.md §2).
//!
//! For modality m with concept `O` (the logits of a uni-modal model, one row per sample):
//!
//! 1. fit a multi-output ridge regression (alpha 120, intercept fitted and not penalised, no
//!    feature scaling) from the fused feature `Z` to `O` on the regression-fit split (`dep`);
//! 2. predict `Ô = Z W + b` on the evaluation split and take the residual `E = Ô − O`;
//! 3. `B = N · cov(O)` with the (N−1) covariance denominator, `B⁺` its Moore–Penrose
//!    pseudo-inverse (singular values at or below `1e-15 · σ_max` dropped, as `torch.pinverse`);
//! 4. `r_m = (1/d) Σ_i e_iᵀ B⁺ e_i`.
//!
//! `r` is 0 when the concept is linearly recoverable from the fused feature and about 1 when it
//! is not at all (a predictor of the column means gives `(N−1)/N`). The reference rounds the
//! predictions to float32 before the subtraction; [`CompetitionStrength::r_official`] keeps that
//! rounding, [`CompetitionStrength::r_float64`] does not. Everything else runs in f64, with
//! nalgebra's Cholesky, QR and SVD for the solves and the pseudo-inverse; as in scikit-learn, a
//! Cholesky solve that fails in floating point (huge, collinear features) falls back to the SVD.
//!
//! ```
//! # fn main() -> candle_core::Result<()> {
//! use agm_metric::competition::{competition_strength, DEFAULT_RIDGE_ALPHA};
//! use candle_core::{Device, Tensor};
//! let dev = Device::Cpu;
//! // The concept is an exact linear function of the feature (whose spread dwarfs alpha = 120):
//! // (almost) nothing is left over.
//! let z = Tensor::new(&[[0.0f64, 1.0], [1.0, 0.0], [2.0, 3.0], [3.0, 1.0], [4.0, 5.0], [5.0, 2.0]], &dev)?;
//! let z = (z * 100.0)?;
//! let o = z.matmul(&Tensor::new(&[[0.3f64, -0.1], [0.2, 0.4]], &dev)?)?;
//! let s = competition_strength("audio", &z, &o, &z, &o, DEFAULT_RIDGE_ALPHA)?;
//! assert!(s.r_float64 < 0.05, "{s:?}");
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use candle_core::{bail, DType, Device, Result, Tensor};
use nalgebra::DMatrix;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use nalgebra;

/// The reference's ridge penalty (`sklearn.linear_model.Ridge(alpha=120)`).
pub const DEFAULT_RIDGE_ALPHA: f64 = 120.0;

/// Relative cut-off of the pseudo-inverse: singular values `<= PINV_RCOND · σ_max` count as zero
/// (`torch.pinverse`'s default).
pub const PINV_RCOND: f64 = 1e-15;

/// How [`Ridge::fit_with`] solves `(XcᵀXc + αI) W = XcᵀYc`. All of them give the same `W` up to
/// rounding; they exist so each can be checked against the others.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RidgeSolver {
    /// What scikit-learn's default solver does: the primal Cholesky solve when there are at
    /// least as many samples as features, the dual one otherwise; the SVD when `alpha` is 0.
    #[default]
    Auto,
    /// Cholesky factorisation of the `F × F` normal matrix `XcᵀXc + αI`; the SVD where the
    /// factorisation fails (as scikit-learn's solver falls back).
    Cholesky,
    /// Kernel form `W = Xcᵀ (XcXcᵀ + αI)⁻¹ Yc`: Cholesky of an `N × N` matrix, with the same
    /// fallback.
    Dual,
    /// QR least squares on the augmented system `[Xc; √α·I] W ≈ [Yc; 0]` (no normal matrix).
    AugmentedQr,
    /// Thin SVD `Xc = U S Vᵀ`: `W = V diag(s / (s² + α)) Uᵀ Yc` (also handles `alpha = 0`).
    Svd,
}

/// A fitted multi-output ridge regression `ŷ = x W + b`.
#[derive(Clone, Debug, PartialEq)]
pub struct Ridge {
    /// `[F, d]`: feature to output.
    weights: DMatrix<f64>,
    /// `[1, d]`.
    intercept: DMatrix<f64>,
    alpha: f64,
}

fn all_finite(m: &DMatrix<f64>) -> bool {
    m.iter().all(|v| v.is_finite())
}

/// Column means as a `[1, k]` row.
fn column_means(m: &DMatrix<f64>) -> DMatrix<f64> {
    let n = m.nrows().max(1) as f64;
    DMatrix::from_fn(1, m.ncols(), |_, j| m.column(j).sum() / n)
}

/// `m` with `row` subtracted from every row.
fn minus_row(m: &DMatrix<f64>, row: &DMatrix<f64>) -> DMatrix<f64> {
    DMatrix::from_fn(m.nrows(), m.ncols(), |i, j| m[(i, j)] - row[(0, j)])
}

/// `m` with `row` added to every row.
fn plus_row(m: &DMatrix<f64>, row: &DMatrix<f64>) -> DMatrix<f64> {
    DMatrix::from_fn(m.nrows(), m.ncols(), |i, j| m[(i, j)] + row[(0, j)])
}

fn add_to_diagonal(m: &mut DMatrix<f64>, value: f64) {
    for i in 0..m.nrows().min(m.ncols()) {
        m[(i, i)] += value;
    }
}

impl Ridge {
    /// Fits `y ≈ x W + b` with penalty `alpha` on `W` only. `x` is `[N, F]`, `y` is `[N, d]`,
    /// any float dtype, any device; the fit runs in f64 on the CPU.
    pub fn fit(x: &Tensor, y: &Tensor, alpha: f64) -> Result<Self> {
        Self::fit_with(x, y, alpha, RidgeSolver::Auto)
    }

    /// [`Ridge::fit`] with a chosen solver.
    pub fn fit_with(x: &Tensor, y: &Tensor, alpha: f64, solver: RidgeSolver) -> Result<Self> {
        Self::fit_matrix(&to_matrix(x, "ridge features")?, &to_matrix(y, "ridge targets")?, alpha, solver)
    }

    /// [`Ridge::fit_with`] on f64 matrices (`x` `[N, F]`, `y` `[N, d]`).
    pub fn fit_matrix(x: &DMatrix<f64>, y: &DMatrix<f64>, alpha: f64, solver: RidgeSolver) -> Result<Self> {
        let (n, f) = x.shape();
        if y.nrows() != n {
            bail!("ridge: the features have {n} rows but the targets have {}", y.nrows());
        }
        if n == 0 || f == 0 || y.ncols() == 0 {
            bail!("ridge: empty input (features {n}×{f}, targets {}×{})", y.nrows(), y.ncols());
        }
        if !alpha.is_finite() || alpha < 0.0 {
            bail!("ridge: alpha must be finite and non-negative, got {alpha}");
        }
        if !all_finite(x) || !all_finite(y) {
            bail!("ridge: the features or the targets hold NaN or infinite values (a diverging model's features?)");
        }
        let x_mean = column_means(x);
        let y_mean = column_means(y);
        let xc = minus_row(x, &x_mean);
        let yc = minus_row(y, &y_mean);
        let solver = match solver {
            RidgeSolver::Auto if alpha == 0.0 => RidgeSolver::Svd,
            RidgeSolver::Auto if f > n => RidgeSolver::Dual,
            RidgeSolver::Auto => RidgeSolver::Cholesky,
            s => s,
        };
        // Thin SVD `Xc = U S Vᵀ`: `W = V diag(s / (s² + α)) Uᵀ Yc`.
        let svd = || -> Result<DMatrix<f64>> {
            let svd = xc.clone().svd(true, true);
            let (Some(u), Some(v_t)) = (svd.u.as_ref(), svd.v_t.as_ref()) else {
                bail!("ridge: the SVD did not return its factors");
            };
            let s = &svd.singular_values;
            let smax = s.max();
            // s / (s² + α); with α = 0 the minimum-norm least-squares solution.
            let shrink = DMatrix::from_fn(s.len(), 1, |i, _| {
                let si = s[i];
                if alpha == 0.0 && si <= PINV_RCOND * smax * (n.max(f) as f64) {
                    0.0
                } else {
                    si / (si * si + alpha)
                }
            });
            let uty = u.tr_mul(&yc);
            let scaled = DMatrix::from_fn(uty.nrows(), uty.ncols(), |i, j| shrink[(i, 0)] * uty[(i, j)]);
            Ok(v_t.tr_mul(&scaled))
        };
        // A normal matrix that is not positive definite in floating point (alpha below the
        // rounding of huge features) goes to the SVD, as scikit-learn's Cholesky solvers do.
        let weights = match solver {
            RidgeSolver::Cholesky | RidgeSolver::Auto => {
                let mut a = xc.tr_mul(&xc);
                add_to_diagonal(&mut a, alpha);
                match a.cholesky() {
                    Some(c) => c.solve(&xc.tr_mul(&yc)),
                    None => svd()?,
                }
            }
            RidgeSolver::Dual => {
                let mut k = &xc * xc.transpose();
                add_to_diagonal(&mut k, alpha);
                match k.cholesky() {
                    Some(c) => xc.tr_mul(&c.solve(&yc)),
                    None => svd()?,
                }
            }
            RidgeSolver::AugmentedQr => {
                let d = yc.ncols();
                let mut a = DMatrix::zeros(n + f, f);
                a.rows_mut(0, n).copy_from(&xc);
                for i in 0..f {
                    a[(n + i, i)] = alpha.sqrt();
                }
                let mut b = DMatrix::zeros(n + f, d);
                b.rows_mut(0, n).copy_from(&yc);
                let qr = a.qr();
                let qtb = qr.q().tr_mul(&b);
                qr.r().solve_upper_triangular(&qtb).ok_or_else(|| {
                    candle_core::Error::Msg(format!(
                        "ridge: the augmented system is rank deficient (alpha {alpha}); use the SVD solver"
                    ))
                })?
            }
            RidgeSolver::Svd => svd()?,
        };
        let intercept = &y_mean - &x_mean * &weights;
        Ok(Self { weights, intercept, alpha })
    }

    /// The ridge penalty the fit used.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    /// Number of input features `F`.
    pub fn feature_dim(&self) -> usize {
        self.weights.nrows()
    }

    /// Number of outputs `d` (the concept's columns).
    pub fn output_dim(&self) -> usize {
        self.weights.ncols()
    }

    /// `W`, `[F, d]`.
    pub fn weights(&self) -> &DMatrix<f64> {
        &self.weights
    }

    /// The coefficients in scikit-learn's layout, `Wᵀ` of shape `[d, F]`, f64 on the CPU.
    pub fn coef(&self) -> Result<Tensor> {
        from_matrix(&self.weights.transpose())
    }

    /// `b`, shape `[d]`, f64 on the CPU.
    pub fn intercept(&self) -> Result<Tensor> {
        Tensor::from_vec(self.intercept.iter().copied().collect::<Vec<f64>>(), self.output_dim(), &Device::Cpu)
    }

    /// `b` as a slice of length `d`.
    pub fn intercept_values(&self) -> &[f64] {
        self.intercept.as_slice()
    }

    /// `x W + b` for `x` of shape `[N, F]`: `[N, d]`, f64 on the CPU.
    pub fn predict(&self, x: &Tensor) -> Result<Tensor> {
        from_matrix(&self.predict_matrix(&to_matrix(x, "ridge features")?)?)
    }

    /// [`Ridge::predict`] on an f64 matrix.
    pub fn predict_matrix(&self, x: &DMatrix<f64>) -> Result<DMatrix<f64>> {
        if x.ncols() != self.feature_dim() {
            bail!("ridge: fitted on {} features, asked to predict from {}", self.feature_dim(), x.ncols());
        }
        Ok(plus_row(&(x * &self.weights), &self.intercept))
    }
}

/// `B = N · cov(O)` with the (N−1) denominator, i.e. `N/(N−1) · Σ_i (o_i − ō)(o_i − ō)ᵀ`.
pub fn scaled_covariance(concept: &DMatrix<f64>) -> Result<DMatrix<f64>> {
    let n = concept.nrows();
    if n < 2 {
        bail!("competition strength: the evaluation split needs at least 2 rows, got {n}");
    }
    let oc = minus_row(concept, &column_means(concept));
    Ok(oc.tr_mul(&oc) * (n as f64 / (n as f64 - 1.0)))
}

/// Moore–Penrose pseudo-inverse through the SVD, dropping singular values at or below
/// `PINV_RCOND · σ_max`.
pub fn pseudo_inverse(m: &DMatrix<f64>) -> Result<DMatrix<f64>> {
    if !all_finite(m) {
        bail!("pseudo-inverse: the matrix holds NaN or infinite values");
    }
    let svd = m.clone().svd(true, true);
    let smax = svd.singular_values.iter().copied().fold(0.0f64, f64::max);
    svd.pseudo_inverse(PINV_RCOND * smax).map_err(|e| candle_core::Error::Msg(format!("pseudo-inverse: {e}")))
}

/// `(1/d) Σ_i e_iᵀ B⁺ e_i` with `E = pred − concept` and `B` = [`scaled_covariance`]`(concept)`.
pub fn trace_distance(pred: &DMatrix<f64>, concept: &DMatrix<f64>) -> Result<f64> {
    let b_pinv = pseudo_inverse(&scaled_covariance(concept)?)?;
    trace_distance_with(pred, concept, &b_pinv)
}

fn trace_distance_with(pred: &DMatrix<f64>, concept: &DMatrix<f64>, b_pinv: &DMatrix<f64>) -> Result<f64> {
    if pred.shape() != concept.shape() {
        bail!("competition strength: predictions are {:?} but the concept is {:?}", pred.shape(), concept.shape());
    }
    if !all_finite(pred) || !all_finite(concept) {
        bail!("competition strength: the predictions or the concept hold NaN or infinite values");
    }
    let e = pred - concept;
    let eb = &e * b_pinv;
    Ok(eb.component_mul(&e).sum() / concept.ncols() as f64)
}

/// Rounds every value to the nearest f32 and widens it back (what the reference does to its
/// ridge predictions).
pub fn round_to_f32(m: &DMatrix<f64>) -> DMatrix<f64> {
    m.map(|v| v as f32 as f64)
}

/// The competition strength of one modality, with what it was computed from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompetitionStrength {
    /// The modality's name.
    pub modality: String,
    /// The reference's value (`r_official`): the ridge predictions are rounded to f32 first.
    pub r_official: f64,
    /// The same formula on the unrounded f64 predictions.
    pub r_float64: f64,
    /// The ridge penalty of the fit.
    pub alpha: f64,
    /// Rows of the regression-fit split.
    pub fit_samples: usize,
    /// Rows of the evaluation split.
    pub eval_samples: usize,
    /// Width `F` of the fused feature.
    pub feature_dim: usize,
    /// Width `d` of the concept (the uni-modal model's logits).
    pub concept_dim: usize,
}

/// Every intermediate of one modality's measurement (for parity replays and debugging).
#[derive(Clone, Debug)]
pub struct Measurement {
    /// The ridge fitted on the fit split.
    pub ridge: Ridge,
    /// f64 predictions on the evaluation split.
    pub pred: DMatrix<f64>,
    /// `pred` rounded to f32 (the reference's).
    pub pred_as_used: DMatrix<f64>,
    /// `pred_as_used − concept`.
    pub residual: DMatrix<f64>,
    /// `N · cov(concept)`.
    pub b: DMatrix<f64>,
    /// The resulting competition strength.
    pub strength: CompetitionStrength,
}

/// Fits the ridge on the fit split and measures on the evaluation split, in f64 matrices.
pub fn measure(
    modality: &str,
    fit_feature: &DMatrix<f64>,
    fit_concept: &DMatrix<f64>,
    eval_feature: &DMatrix<f64>,
    eval_concept: &DMatrix<f64>,
    alpha: f64,
) -> Result<Measurement> {
    let ctx = |e: candle_core::Error| candle_core::Error::Msg(format!("modality `{modality}`: {e}"));
    if fit_concept.ncols() != eval_concept.ncols() {
        return Err(ctx(candle_core::Error::Msg(format!(
            "the concept has {} columns on the fit split but {} on the evaluation split",
            fit_concept.ncols(),
            eval_concept.ncols()
        ))));
    }
    if eval_feature.nrows() != eval_concept.nrows() {
        return Err(ctx(candle_core::Error::Msg(format!(
            "the evaluation split has {} feature rows but {} concept rows",
            eval_feature.nrows(),
            eval_concept.nrows()
        ))));
    }
    let ridge = Ridge::fit_matrix(fit_feature, fit_concept, alpha, RidgeSolver::Auto).map_err(ctx)?;
    let pred = ridge.predict_matrix(eval_feature).map_err(ctx)?;
    let pred_as_used = round_to_f32(&pred);
    let b = scaled_covariance(eval_concept).map_err(ctx)?;
    let b_pinv = pseudo_inverse(&b).map_err(ctx)?;
    let r_official = trace_distance_with(&pred_as_used, eval_concept, &b_pinv).map_err(ctx)?;
    let r_float64 = trace_distance_with(&pred, eval_concept, &b_pinv).map_err(ctx)?;
    let strength = CompetitionStrength {
        modality: modality.to_string(),
        r_official,
        r_float64,
        alpha,
        fit_samples: fit_feature.nrows(),
        eval_samples: eval_feature.nrows(),
        feature_dim: fit_feature.ncols(),
        concept_dim: eval_concept.ncols(),
    };
    Ok(Measurement { ridge, residual: &pred_as_used - eval_concept, pred, pred_as_used, b, strength })
}

/// The competition strength of one modality from tensors (any float dtype and device):
/// features `[N_fit, F]` / `[N_eval, F]`, concepts `[N_fit, d]` / `[N_eval, d]`.
pub fn competition_strength(
    modality: &str,
    fit_feature: &Tensor,
    fit_concept: &Tensor,
    eval_feature: &Tensor,
    eval_concept: &Tensor,
    alpha: f64,
) -> Result<CompetitionStrength> {
    Ok(measure(
        modality,
        &to_matrix(fit_feature, "fit-split features")?,
        &to_matrix(fit_concept, "fit-split concept")?,
        &to_matrix(eval_feature, "evaluation-split features")?,
        &to_matrix(eval_concept, "evaluation-split concept")?,
        alpha,
    )?
    .strength)
}

/// A 2-D tensor as an f64 matrix on the CPU.
pub fn to_matrix(t: &Tensor, what: &str) -> Result<DMatrix<f64>> {
    let (n, k) = t
        .dims2()
        .map_err(|_| candle_core::Error::Msg(format!("{what}: expected [rows, columns], got shape {:?}", t.dims())))?;
    if !t.dtype().is_float() {
        bail!("{what}: expected a float tensor, got {:?}", t.dtype());
    }
    let flat = t.to_device(&Device::Cpu)?.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    Ok(DMatrix::from_row_slice(n, k, &flat))
}

/// An f64 matrix as a `[rows, columns]` f64 tensor on the CPU.
pub fn from_matrix(m: &DMatrix<f64>) -> Result<Tensor> {
    let rows: Vec<f64> = m.transpose().as_slice().to_vec();
    Tensor::from_vec(rows, m.shape(), &Device::Cpu)
}

// ---------------------------------------------------------------------------------------------
// Golden replay (FORMAT.md §2, kind `competition_strength`)

/// Why a golden case could not be replayed (numbers that differ are not errors).
#[derive(Debug, Clone, PartialEq)]
pub enum ReplayError {
    /// case.json lacks a field or holds a malformed one.
    Case(String),
    /// tensors.safetensors lacks a tensor or holds a malformed one.
    Tensors(String),
}

impl fmt::Display for ReplayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplayError::Case(m) | ReplayError::Tensors(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for ReplayError {}

/// One stored scalar of `results.<m>` and the replay's value for it.
#[derive(Clone, Debug, PartialEq)]
pub struct ScalarCheck {
    /// Location in case.json, e.g. `results.audio.r_official`.
    pub key: String,
    /// The field name, e.g. `r_official`.
    pub field: String,
    /// The value stored in case.json.
    pub expected: f64,
    /// The value the replay computed.
    pub computed: f64,
}

/// What a replay of a `competition_strength` case computed.
#[derive(Clone, Debug)]
pub struct CompetitionReplay {
    /// The ridge penalty used (case.json `ridge_alpha` / `alpha` if present, else FORMAT.md's 120).
    pub alpha: f64,
    /// Modalities, in the order of `results`.
    pub modalities: Vec<String>,
    /// Computed tensors under the case's keys: `ridge/<m>/coef`, `ridge/<m>/intercept`,
    /// `test/pred/<m>`, `test/pred_as_used/<m>`, `test/residual/<m>`, `test/B/<m>`.
    pub tensors: BTreeMap<String, Tensor>,
    /// Every stored scalar the replay reproduces, with the computed value.
    pub scalars: Vec<ScalarCheck>,
    /// Fields and tensor keys the replay read as informational or inputs only.
    pub informational: Vec<String>,
    /// The measurement of each modality.
    pub strengths: Vec<CompetitionStrength>,
}

/// Top-level case.json fields the replay reads.
const USED_FIELDS: &[&str] = &["case", "format_version", "kind", "dtype", "sizes", "results", "alpha", "ridge_alpha"];

/// Tensor keys per modality the replay computes (after the `<m>` substitution).
const COMPUTED: &[&str] = &[
    "ridge/{m}/coef",
    "ridge/{m}/intercept",
    "test/pred/{m}",
    "test/pred_as_used/{m}",
    "test/residual/{m}",
    "test/B/{m}",
];

/// Replays a `competition_strength` case from its case.json and tensors: fits each modality's
/// ridge on `dep/*`, measures on `test/*`, and returns the computed tensors and scalars for the
/// caller to compare (FORMAT.md §6). Modalities come from `results`; nothing is selected by name.
pub fn replay_case(
    case: &Value,
    tensors: &HashMap<String, Tensor>,
) -> std::result::Result<CompetitionReplay, ReplayError> {
    let bad_case = |m: String| ReplayError::Case(m);
    let obj = case.as_object().ok_or_else(|| bad_case("the top level must be a JSON object".into()))?;
    match obj.get("kind").and_then(Value::as_str) {
        Some("competition_strength") => {}
        Some(k) => return Err(bad_case(format!("kind `{k}` is not `competition_strength`"))),
        None => return Err(bad_case("missing string field `kind`".into())),
    }
    if let Some(d) = obj.get("dtype") {
        if d.as_str() != Some("float64") {
            return Err(bad_case(format!("dtype {d} is not supported (only float64)")));
        }
    }
    let mut informational = Vec::new();
    let alpha = match obj.get("ridge_alpha").or_else(|| obj.get("alpha")) {
        Some(v) => v.as_f64().ok_or_else(|| bad_case(format!("alpha {v} is not a number")))?,
        None => {
            informational.push(format!("alpha: not stored in case.json; FORMAT.md §2's {DEFAULT_RIDGE_ALPHA} used"));
            DEFAULT_RIDGE_ALPHA
        }
    };
    for k in obj.keys().filter(|k| !USED_FIELDS.contains(&k.as_str())) {
        informational.push(format!("case.json: {k}"));
    }
    let results = obj
        .get("results")
        .and_then(Value::as_object)
        .ok_or_else(|| bad_case("missing object field `results` ({modality: {r_official, ...}})".into()))?;
    if results.is_empty() {
        return Err(bad_case("`results` is empty: nothing to replay".into()));
    }
    let modalities: Vec<String> = results.keys().cloned().collect();

    let get = |key: &str| -> std::result::Result<DMatrix<f64>, ReplayError> {
        let t = tensors.get(key).ok_or_else(|| ReplayError::Tensors(format!("missing tensor `{key}`")))?;
        to_matrix(t, key).map_err(|e| ReplayError::Tensors(e.to_string()))
    };
    let dep_feature = get("dep/feature")?;
    let test_feature = get("test/feature")?;
    if dep_feature.ncols() != test_feature.ncols() {
        return Err(ReplayError::Tensors(format!(
            "`dep/feature` has {} columns but `test/feature` has {}",
            dep_feature.ncols(),
            test_feature.ncols()
        )));
    }
    let sizes = obj.get("sizes").and_then(Value::as_object);
    let check_size = |name: &str, actual: usize| -> std::result::Result<(), ReplayError> {
        match sizes.and_then(|s| s.get(name)) {
            None => Ok(()),
            Some(v) if v.as_u64() == Some(actual as u64) => Ok(()),
            Some(v) => Err(ReplayError::Tensors(format!("sizes.{name} = {v} but the tensors have {actual}"))),
        }
    };
    check_size("N_dep", dep_feature.nrows())?;
    check_size("N_test", test_feature.nrows())?;
    check_size("feature_dim", dep_feature.ncols())?;

    let mut out = BTreeMap::new();
    let mut scalars = Vec::new();
    let mut strengths = Vec::new();
    for m in &modalities {
        let dep_concept = get(&format!("dep/concept/{m}"))?;
        let test_concept = get(&format!("test/concept/{m}"))?;
        check_size("concept_dim", test_concept.ncols())?;
        let tensor_err = |e: candle_core::Error| ReplayError::Tensors(e.to_string());
        let meas = measure(m, &dep_feature, &dep_concept, &test_feature, &test_concept, alpha).map_err(tensor_err)?;
        // An independent route to the f64 value: B⁻¹ through a Cholesky solve instead of B⁺.
        let closed_form = {
            let e = &meas.pred - &test_concept;
            let et = e.transpose();
            meas.b.clone().cholesky().map(|ch| ch.solve(&et).component_mul(&et).sum() / e.ncols() as f64)
        };
        let mean_pred = DMatrix::from_fn(test_concept.nrows(), test_concept.ncols(), |_, j| {
            test_concept.column(j).sum() / test_concept.nrows() as f64
        });
        let sanity = trace_distance(&mean_pred, &test_concept).map_err(tensor_err)?;
        let computed = [
            ("ridge/{m}/coef", from_matrix(&meas.ridge.weights().transpose())),
            ("ridge/{m}/intercept", meas.ridge.intercept()),
            ("test/pred/{m}", from_matrix(&meas.pred)),
            ("test/pred_as_used/{m}", from_matrix(&meas.pred_as_used)),
            ("test/residual/{m}", from_matrix(&meas.residual)),
            ("test/B/{m}", from_matrix(&meas.b)),
        ];
        for (pattern, t) in computed {
            out.insert(pattern.replace("{m}", m), t.map_err(tensor_err)?);
        }
        let fields = results[m].as_object().ok_or_else(|| bad_case(format!("results.{m} must be an object")))?;
        let s = &meas.strength;
        for (field, value) in fields {
            let key = format!("results.{m}.{field}");
            let computed = match field.as_str() {
                "r_official" | "r_sum_multiply_form_on_official_residual" => Some(s.r_official),
                "r_float64_no_cast" => Some(s.r_float64),
                "r_closed_form_float64" => Some(closed_form.unwrap_or(s.r_float64)),
                "sanity_mean_predictor_r" => Some(sanity),
                _ => None,
            };
            match (computed, value.as_f64()) {
                (Some(c), Some(x)) => {
                    scalars.push(ScalarCheck { key, field: field.clone(), expected: x, computed: c });
                }
                (Some(_), None) => return Err(bad_case(format!("{key}: expected a number, found {value}"))),
                (None, _) => informational.push(format!("case.json: {key}")),
            }
        }
        for required in ["r_official", "r_float64_no_cast"] {
            if !fields.contains_key(required) {
                return Err(bad_case(format!("results.{m}.{required} is missing (FORMAT.md §2 requires it)")));
            }
        }
        strengths.push(meas.strength);
    }
    for key in tensors.keys() {
        let is_input = key == "dep/feature"
            || key == "test/feature"
            || modalities.iter().any(|m| key == &format!("dep/concept/{m}") || key == &format!("test/concept/{m}"));
        let is_computed = modalities.iter().any(|m| COMPUTED.iter().any(|p| p.replace("{m}", m) == *key));
        if !is_input && !is_computed {
            informational.push(format!("tensors: {key}"));
        }
    }
    informational.sort();
    Ok(CompetitionReplay { alpha, modalities, tensors: out, scalars, informational, strengths })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covariance_uses_the_n_minus_1_denominator_times_n() {
        // O = [[0],[2]]: mean 1, scatter 2, cov (N−1) = 2, B = 2·2 = 4.
        let o = DMatrix::from_row_slice(2, 1, &[0.0, 2.0]);
        assert_eq!(scaled_covariance(&o).unwrap()[(0, 0)], 4.0);
        assert!(scaled_covariance(&DMatrix::from_row_slice(1, 1, &[1.0])).is_err());
    }

    #[test]
    fn pseudo_inverse_of_a_singular_matrix() {
        let b = DMatrix::from_row_slice(2, 2, &[2.0, 0.0, 0.0, 0.0]);
        let p = pseudo_inverse(&b).unwrap();
        assert!((p[(0, 0)] - 0.5).abs() < 1e-15 && p[(1, 1)].abs() < 1e-15, "{p}");
    }

    #[test]
    fn float32_rounding_is_round_to_nearest() {
        let x = 1.0 + f64::EPSILON * 3.0;
        assert_eq!(round_to_f32(&DMatrix::from_row_slice(1, 1, &[x]))[(0, 0)], 1.0);
        let third = 1.0 / 3.0;
        assert_eq!(round_to_f32(&DMatrix::from_row_slice(1, 1, &[third]))[(0, 0)], (1.0f32 / 3.0) as f64);
    }

    #[test]
    fn mean_predictor_gives_n_minus_1_over_n() {
        let o = DMatrix::from_row_slice(4, 2, &[1.0, 0.0, 0.0, 2.0, 3.0, 1.0, 1.0, 5.0]);
        let mean = DMatrix::from_fn(4, 2, |_, j| o.column(j).sum() / 4.0);
        assert!((trace_distance(&mean, &o).unwrap() - 0.75).abs() < 1e-14);
    }
}
