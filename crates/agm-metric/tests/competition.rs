//! Ridge regression and competition strength: a hand-computed case, the solvers against each
//! other, constructed data at both ends of the scale, and the golden `competition` case.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use agm_metric::competition::{
    competition_strength, from_matrix, replay_case, to_matrix, trace_distance, ReplayError, Ridge, RidgeSolver,
    DEFAULT_RIDGE_ALPHA,
};
use candle_core::{Device, Tensor};
use nalgebra::DMatrix;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

fn gaussian(rng: &mut ChaCha8Rng, rows: usize, cols: usize, scale: f64) -> DMatrix<f64> {
    DMatrix::from_fn(rows, cols, |_, _| {
        let z: f64 = StandardNormal.sample(rng);
        scale * z
    })
}

fn max_rel_diff(a: &DMatrix<f64>, b: &DMatrix<f64>) -> f64 {
    assert_eq!(a.shape(), b.shape());
    let scale = a.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    (a - b).iter().fold(0.0f64, |m, v| m.max(v.abs())) / scale
}

#[test]
fn ridge_with_intercept_matches_a_hand_computed_3x2_case() {
    // X = [[1, 2], [3, 0], [5, 4]]            x̄ = [3, 2]
    // Xc = [[-2, 0], [0, -2], [2, 2]]
    // XcᵀXc = [[8, 4], [4, 8]];  + αI with α = 2  →  A = [[10, 4], [4, 10]], det A = 84,
    // A⁻¹ = (1/84) [[10, -4], [-4, 10]]
    // Y = [[1, 0], [2, 3], [6, 3]]             ȳ = [3, 2]
    // Yc = [[-2, -2], [-1, 1], [3, 1]]
    // XcᵀYc = [[(-2)(-2) + 0 + 2·3, (-2)(-2) + 0 + 2·1], [0 + (-2)(-1) + 2·3, 0 + (-2)(1) + 2·1]]
    //       = [[10, 6], [8, 0]]
    // W = A⁻¹ XcᵀYc: column 1 = (1/84)[100 − 32, −40 + 80] = [68/84, 40/84] = [17/21, 10/21]
    //                column 2 = (1/84)[60 − 0, −24 + 0]    = [60/84, −24/84] = [5/7, −2/7]
    // b = ȳ − x̄ W: b1 = 3 − (3·17 + 2·10)/21 = 3 − 71/21 = −8/21
    //              b2 = 2 − (3·5 − 2·2)/7   = 2 − 11/7  = 3/7
    let dev = Device::Cpu;
    let x = Tensor::new(&[[1.0f64, 2.0], [3.0, 0.0], [5.0, 4.0]], &dev).unwrap();
    let y = Tensor::new(&[[1.0f64, 0.0], [2.0, 3.0], [6.0, 3.0]], &dev).unwrap();
    let coef_expected = [[17.0 / 21.0, 10.0 / 21.0], [5.0 / 7.0, -2.0 / 7.0]];
    let intercept_expected = [-8.0 / 21.0, 3.0 / 7.0];
    for solver in
        [RidgeSolver::Auto, RidgeSolver::Cholesky, RidgeSolver::Dual, RidgeSolver::AugmentedQr, RidgeSolver::Svd]
    {
        let ridge = Ridge::fit_with(&x, &y, 2.0, solver).unwrap();
        // scikit-learn layout: coef is [outputs, features].
        let coef = ridge.coef().unwrap().to_vec2::<f64>().unwrap();
        for (row, exp_row) in coef.iter().zip(&coef_expected) {
            for (c, e) in row.iter().zip(exp_row) {
                assert!((c - e).abs() < 1e-14, "{solver:?}: coef {coef:?}, expected {coef_expected:?}");
            }
        }
        let b = ridge.intercept().unwrap().to_vec1::<f64>().unwrap();
        for (c, e) in b.iter().zip(&intercept_expected) {
            assert!((c - e).abs() < 1e-14, "{solver:?}: intercept {b:?}, expected {intercept_expected:?}");
        }
        // Prediction at the first sample: y1 = 17/21 + 2·10/21 − 8/21 = 29/21; y2 = 5/7 − 4/7 + 3/7 = 4/7.
        let p = ridge.predict(&x).unwrap().to_vec2::<f64>().unwrap();
        assert!((p[0][0] - 29.0 / 21.0).abs() < 1e-14 && (p[0][1] - 4.0 / 7.0).abs() < 1e-14, "{p:?}");
    }
}

#[test]
fn ridge_solvers_agree_on_random_data() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    // More samples than features (primal) and more features than samples (dual).
    for (n, f, d, alpha) in [(60, 8, 3, 120.0), (60, 8, 3, 0.5), (12, 30, 4, 120.0), (12, 30, 4, 0.01)] {
        let x = gaussian(&mut rng, n, f, 3.0);
        let y = gaussian(&mut rng, n, d, 1.0) + &x * gaussian(&mut rng, f, d, 1.0);
        let reference = Ridge::fit_matrix(&x, &y, alpha, RidgeSolver::AugmentedQr).unwrap();
        for solver in [RidgeSolver::Auto, RidgeSolver::Cholesky, RidgeSolver::Dual, RidgeSolver::Svd] {
            let r = Ridge::fit_matrix(&x, &y, alpha, solver).unwrap();
            let dw = max_rel_diff(reference.weights(), r.weights());
            assert!(dw < 1e-10, "n {n} f {f} alpha {alpha}: {solver:?} vs QR weights differ by {dw:e}");
            let (bq, bs) = (reference.intercept_values(), r.intercept_values());
            let db = bq.iter().zip(bs).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
            assert!(db < 1e-10 * bq.iter().fold(1.0f64, |m, v| m.max(v.abs())), "{solver:?}: intercept {db:e}");
        }
        // The ridge optimum has zero gradient: Xcᵀ(Xc W − Yc) + αW = 0 (checked without any solver).
        let xm = DMatrix::from_fn(1, f, |_, j| x.column(j).mean());
        let ym = DMatrix::from_fn(1, d, |_, j| y.column(j).mean());
        let xc = DMatrix::from_fn(n, f, |i, j| x[(i, j)] - xm[(0, j)]);
        let yc = DMatrix::from_fn(n, d, |i, j| y[(i, j)] - ym[(0, j)]);
        let w = reference.weights();
        let grad = xc.transpose() * (&xc * w - &yc) + w * alpha;
        let scale = (xc.transpose() * &yc).amax();
        assert!(grad.amax() < 1e-10 * scale, "gradient {:e} at the optimum", grad.amax());
    }
}

#[test]
fn bad_ridge_input_is_an_error() {
    let dev = Device::Cpu;
    let x = Tensor::new(&[[1.0f64, 2.0], [3.0, 0.0]], &dev).unwrap();
    let y = Tensor::new(&[[1.0f64], [2.0], [3.0]], &dev).unwrap();
    let err = Ridge::fit(&x, &y, 1.0).unwrap_err().to_string();
    assert!(err.contains("2 rows") && err.contains('3'), "{err}");
    let y2 = Tensor::new(&[[1.0f64], [f64::NAN]], &dev).unwrap();
    assert!(Ridge::fit(&x, &y2, 1.0).unwrap_err().to_string().contains("NaN"));
    let y3 = Tensor::new(&[[1.0f64], [2.0]], &dev).unwrap();
    assert!(Ridge::fit(&x, &y3, -1.0).unwrap_err().to_string().contains("alpha"));
    let ridge = Ridge::fit(&x, &y3, 1.0).unwrap();
    assert!(ridge.predict(&Tensor::zeros((1, 3), candle_core::DType::F64, &dev).unwrap()).is_err());
}

/// Fused features of the scale of ReLU features (std 4, as in the golden case): with alpha = 120
/// the penalty then shrinks the fit by about 2%.
fn features(rng: &mut ChaCha8Rng, n: usize) -> DMatrix<f64> {
    gaussian(rng, n, 24, 4.0)
}

#[test]
fn strength_is_small_for_a_linear_concept_and_near_one_for_an_independent_one() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let (n_fit, n_eval, d) = (400, 300, 10);
    let z_fit = features(&mut rng, n_fit);
    let z_eval = features(&mut rng, n_eval);
    let w = gaussian(&mut rng, 24, d, 1.0);
    let b = gaussian(&mut rng, 1, d, 5.0);
    let linear = |z: &DMatrix<f64>, rng: &mut ChaCha8Rng| {
        let clean = z * &w + DMatrix::from_fn(z.nrows(), d, |_, j| b[(0, j)]);
        // 1% noise relative to each output's spread.
        let spread: Vec<f64> = (0..d).map(|j| clean.column(j).variance().sqrt()).collect();
        let noise = gaussian(rng, z.nrows(), d, 1.0);
        DMatrix::from_fn(z.nrows(), d, |i, j| clean[(i, j)] + 0.01 * spread[j] * noise[(i, j)])
    };
    let o_fit = linear(&z_fit, &mut rng);
    let o_eval = linear(&z_eval, &mut rng);
    let t = |m: &DMatrix<f64>| from_matrix(m).unwrap();
    let s =
        competition_strength("linear", &t(&z_fit), &t(&o_fit), &t(&z_eval), &t(&o_eval), DEFAULT_RIDGE_ALPHA).unwrap();
    assert!(s.r_float64 < 0.05 && s.r_official < 0.05, "linear concept: {s:?}");
    assert!((s.r_official - s.r_float64).abs() < 1e-5, "{s:?}");
    assert_eq!((s.fit_samples, s.eval_samples, s.feature_dim, s.concept_dim), (n_fit, n_eval, 24, d));

    let i_fit = gaussian(&mut rng, n_fit, d, 3.0);
    let i_eval = gaussian(&mut rng, n_eval, d, 3.0);
    let s = competition_strength("independent", &t(&z_fit), &t(&i_fit), &t(&z_eval), &t(&i_eval), DEFAULT_RIDGE_ALPHA)
        .unwrap();
    assert!(s.r_float64 > 0.9 && s.r_official > 0.9, "independent concept: {s:?}");

    // Halfway: half of the concept's columns linear, half independent → about 0.5.
    let mixed = |lin: &DMatrix<f64>, ind: &DMatrix<f64>| {
        DMatrix::from_fn(lin.nrows(), d, |i, j| if j < d / 2 { lin[(i, j)] } else { ind[(i, j)] })
    };
    let s = competition_strength(
        "mixed",
        &t(&z_fit),
        &t(&mixed(&o_fit, &i_fit)),
        &t(&z_eval),
        &t(&mixed(&o_eval, &i_eval)),
        DEFAULT_RIDGE_ALPHA,
    )
    .unwrap();
    assert!(s.r_float64 > 0.4 && s.r_float64 < 0.6, "mixed concept: {s:?}");
}

#[test]
fn a_perfect_predictor_scores_zero_and_the_mean_predictor_n_minus_1_over_n() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let o = gaussian(&mut rng, 20, 3, 2.0);
    assert!(trace_distance(&o, &o).unwrap().abs() < 1e-15);
    let mean = DMatrix::from_fn(20, 3, |_, j| o.column(j).mean());
    assert!((trace_distance(&mean, &o).unwrap() - 19.0 / 20.0).abs() < 1e-12);
}

// ---------------------------------------------------------------------------------------------
// Golden case

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/golden/competition")
}

fn load_case(dir: &Path) -> (serde_json::Value, HashMap<String, Tensor>) {
    let json = serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    let tensors = candle_core::safetensors::load(dir.join("tensors.safetensors"), &Device::Cpu).unwrap();
    (json, tensors)
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(candle_core::DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

/// FORMAT.md §6: `max|X − Y| / max(max|X|, 1e-3·G)`, G the largest |value| under the key's prefix.
fn tensor_errors(
    expected: &HashMap<String, Tensor>,
    computed: &std::collections::BTreeMap<String, Tensor>,
) -> Vec<(String, f64)> {
    let prefix = |k: &str| k[..k.rfind('/').unwrap_or(k.len())].to_string();
    let mut g: HashMap<String, f64> = HashMap::new();
    for (k, t) in expected {
        let m = values(t).iter().fold(0.0f64, |a, v| a.max(v.abs()));
        let e = g.entry(prefix(k)).or_insert(0.0);
        *e = e.max(m);
    }
    let mut out = Vec::new();
    for (k, y) in computed {
        let x = &expected[k];
        assert_eq!(x.dims(), y.dims(), "{k}");
        let (xv, yv) = (values(x), values(y));
        let diff = xv.iter().zip(&yv).fold(0.0f64, |a, (p, q)| a.max((p - q).abs()));
        let scale = xv.iter().fold(0.0f64, |a, v| a.max(v.abs())).max(1e-3 * g[&prefix(k)]);
        out.push((k.clone(), diff / scale));
    }
    out
}

#[test]
#[allow(clippy::print_stdout)] // the numbers, shown with --nocapture
fn golden_competition_case_passes() {
    let (json, tensors) = load_case(&fixture());
    let replay = replay_case(&json, &tensors).unwrap();
    assert_eq!(replay.modalities, ["audio", "visual"]);
    assert_eq!(replay.alpha, 120.0);
    // Every stored result tensor is reproduced: 6 per modality.
    assert_eq!(replay.tensors.len(), 12);
    for (key, err) in tensor_errors(&tensors, &replay.tensors) {
        println!("{key:<28} err {err:.3e}");
        assert!(err <= 1e-10, "{key}: err {err:e}");
    }
    let fields: Vec<&str> = replay.scalars.iter().map(|s| s.field.as_str()).collect();
    for f in ["r_official", "r_float64_no_cast", "r_closed_form_float64", "sanity_mean_predictor_r"] {
        assert_eq!(fields.iter().filter(|x| **x == f).count(), 2, "{f} compared for both modalities");
    }
    for s in &replay.scalars {
        let rel = (s.expected - s.computed).abs() / s.expected.abs();
        println!("{:<55} expected {:.17} got {:.17} rel {rel:.2e}", s.key, s.expected, s.computed);
        assert!(rel <= 1e-10, "{}: expected {}, got {} (rel {rel:e})", s.key, s.expected, s.computed);
    }
    // The f32 rounding is what separates the two values (at the 1e-8 level).
    for s in &replay.strengths {
        let rel = (s.r_official - s.r_float64).abs() / s.r_float64;
        assert!(rel > 1e-9 && rel < 1e-7, "{s:?}");
    }
    assert!(
        replay.informational.iter().any(|i| i.contains("official_vs_float64_rel_diff")),
        "{:?}",
        replay.informational
    );
}

#[test]
fn a_perturbed_golden_input_changes_the_numbers() {
    let (json, mut tensors) = load_case(&fixture());
    let key = "test/concept/visual";
    let mut m = to_matrix(&tensors[key], key).unwrap();
    m[(3, 1)] *= 1.0 + 1e-6;
    tensors.insert(key.to_string(), from_matrix(&m).unwrap());
    let replay = replay_case(&json, &tensors).unwrap();
    let bad: Vec<&str> = replay
        .scalars
        .iter()
        .filter(|s| (s.expected - s.computed).abs() / s.expected.abs() > 1e-10)
        .map(|s| s.key.as_str())
        .collect();
    assert!(bad.contains(&"results.visual.r_official"), "{bad:?}");
    assert!(!bad.iter().any(|k| k.contains("audio")), "{bad:?}");
    let errs = tensor_errors(&tensors_from_fixture(), &replay.tensors);
    let failed: Vec<&str> = errs.iter().filter(|(_, e)| *e > 1e-10).map(|(k, _)| k.as_str()).collect();
    assert!(failed.contains(&"test/residual/visual") && failed.contains(&"test/B/visual"), "{failed:?}");
}

fn tensors_from_fixture() -> HashMap<String, Tensor> {
    load_case(&fixture()).1
}

#[test]
fn malformed_cases_are_errors_that_name_what_is_missing() {
    let (json, tensors) = load_case(&fixture());
    let mut t = tensors.clone();
    t.remove("dep/concept/audio");
    let err = replay_case(&json, &t).unwrap_err();
    assert!(matches!(&err, ReplayError::Tensors(m) if m.contains("dep/concept/audio")), "{err}");

    let mut j = json.clone();
    j["kind"] = "train_steps".into();
    assert!(matches!(replay_case(&j, &tensors).unwrap_err(), ReplayError::Case(m) if m.contains("train_steps")));

    let mut j = json.clone();
    j["sizes"]["N_test"] = 31.into();
    let err = replay_case(&j, &tensors).unwrap_err().to_string();
    assert!(err.contains("N_test"), "{err}");

    let mut j = json.clone();
    j["results"]["audio"].as_object_mut().unwrap().remove("r_official");
    let err = replay_case(&j, &tensors).unwrap_err().to_string();
    assert!(err.contains("results.audio.r_official"), "{err}");

    // Another folder of the same format with other sizes and a stored alpha replays as well.
    let mut j = json.clone();
    j["alpha"] = 5.0.into();
    let replay = replay_case(&j, &tensors).unwrap();
    assert_eq!(replay.alpha, 5.0);
}

#[test]
fn a_normal_matrix_that_rounding_breaks_falls_back_to_the_svd() {
    // Features of a diverging model: huge, and the second column a copy of the first. In exact
    // arithmetic XcᵀXc + 120·I is positive definite; in f64 the 120 is below the rounding of
    // ~1e26 entries, and the Cholesky factorisation fails. scikit-learn then solves by SVD.
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (n, d) = (40, 2);
    let base = gaussian(&mut rng, n, 1, 1e12);
    let x = DMatrix::from_fn(n, 3, |i, j| if j == 2 { base[(i, 0)] * 0.5 } else { base[(i, 0)] });
    let y = gaussian(&mut rng, n, d, 1.0);
    let xm = DMatrix::from_fn(1, 3, |_, j| x.column(j).mean());
    let xc = DMatrix::from_fn(n, 3, |i, j| x[(i, j)] - xm[(0, j)]);
    let mut normal = xc.tr_mul(&xc);
    for i in 0..3 {
        normal[(i, i)] += DEFAULT_RIDGE_ALPHA;
    }
    assert!(normal.cholesky().is_none(), "the case must break the factorisation to test the fallback");
    let svd = Ridge::fit_matrix(&x, &y, DEFAULT_RIDGE_ALPHA, RidgeSolver::Svd).unwrap();
    for solver in [RidgeSolver::Auto, RidgeSolver::Cholesky] {
        let r = Ridge::fit_matrix(&x, &y, DEFAULT_RIDGE_ALPHA, solver).unwrap();
        assert_eq!(r.weights(), svd.weights(), "{solver:?}");
    }
}
