//! Shapley mono-modal outputs of the AGM reference, for any number of modalities.
//!
//! Write `f(S)` for the logits of the pass that keeps the modalities in `S`. The reference's
//! mono-modal output of modality `x` is the Shapley value over non-empty coalitions:
//!
//! `m_x = Σ_{S ⊆ N∖{x}} w(|S|) · [f(S ∪ {x}) − f(S)]`, with `f(∅) := 0` and
//! `w(k) = k!(M−k−1)!/M!`.
//!
//! This equals the reference's forms for M = 2 and 3 (`m_a = ½(T − f(v) + f(a))`, ...), and for
//! any M it is the exact Shapley value plus `f(∅)/M`, so `Σ_x m_x = f(N)` (efficiency).

use agm_core::Subset;
use candle_core::{DType, Result, Tensor, D};

/// Every non-empty proper subset of `0..m`, largest first.
pub fn masked_subsets(m: usize) -> Vec<Subset> {
    let full = Subset::full(m);
    let mut subsets: Vec<Subset> = Subset::all(m).filter(|s| !s.is_empty() && *s != full).collect();
    subsets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    subsets
}

/// The Shapley weight of a coalition of `k` other players among `m`: `k!(m−k−1)!/m!`.
pub fn shapley_weight(m: usize, k: usize) -> f64 {
    let fact = |n: usize| (1..=n).fold(1.0f64, |a, i| a * i as f64);
    fact(k) * fact(m - k - 1) / fact(m)
}

/// Mono-modal outputs `m_x` for every modality, from the logits of every non-empty pass.
/// `logits(S)` must return the pass keeping `S` for every non-empty `S`.
pub fn mono_outputs<'a, F>(m: usize, logits: F) -> Result<Vec<Tensor>>
where
    F: Fn(Subset) -> Option<&'a Tensor>,
{
    let pass =
        |s: Subset| logits(s).ok_or_else(|| candle_core::Error::Msg(format!("the pass keeping {s:?} was not run")));
    (0..m)
        .map(|x| {
            let mut acc: Option<Tensor> = None;
            for s in Subset::all(m).filter(|s| !s.contains(x)) {
                let w = shapley_weight(m, s.len());
                let with_x = pass(s.with(x))?;
                let marginal = if s.is_empty() { with_x.clone() } else { (with_x - pass(s)?)? };
                let term = marginal.affine(w, 0.0)?;
                acc = Some(match acc {
                    None => term,
                    Some(a) => (a + term)?,
                });
            }
            acc.ok_or_else(|| candle_core::Error::Msg("no modalities".into()))
        })
        .collect()
}

/// The exact Shapley values `φ_x = m_x − f(∅)/M` (the reference's `m_x_mc`).
pub fn exact_shapley(mono: &[Tensor], empty_pass: &Tensor) -> Result<Vec<Tensor>> {
    let share = empty_pass.affine(1.0 / mono.len() as f64, 0.0)?;
    mono.iter().map(|m| m - &share).collect()
}

/// The reference's per-batch score: `mean_k −log p_k` with `p_k = softmax(logits)[k, y_k]`;
/// with a floor, any `p_k < floor` (or a non-finite log) contributes `−log(floor)`.
pub fn score(logits: &Tensor, labels: &[u32], prob_floor: Option<f64>) -> Result<f64> {
    let probs = true_class_probs(logits, labels)?;
    let n = probs.len() as f64;
    let total: f64 = probs
        .iter()
        .map(|&p| {
            let nl = -p.ln();
            match prob_floor {
                Some(floor) if p < floor || !nl.is_finite() => -floor.ln(),
                _ => nl,
            }
        })
        .sum();
    Ok(total / n)
}

/// `softmax(logits)[k, y_k]` for every row, computed in f64.
pub fn true_class_probs(logits: &Tensor, labels: &[u32]) -> Result<Vec<f64>> {
    let probs = candle_nn::ops::softmax(&logits.detach().to_dtype(DType::F64)?, D::Minus1)?;
    let rows = probs.to_vec2::<f64>()?;
    if rows.len() != labels.len() {
        candle_core::bail!("{} rows of logits but {} labels", rows.len(), labels.len());
    }
    Ok(rows.iter().zip(labels).map(|(r, &y)| r[y as usize]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use std::collections::HashMap;

    fn random_passes(m: usize) -> HashMap<Subset, Tensor> {
        let mut state = 12345u64;
        Subset::all(m)
            .map(|s| {
                let v: Vec<f64> = (0..6)
                    .map(|_| {
                        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
                    })
                    .collect();
                (s, Tensor::from_vec(v, (2, 3), &Device::Cpu).unwrap())
            })
            .collect()
    }

    fn max_abs(t: &Tensor) -> f64 {
        t.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap()
    }

    #[test]
    fn efficiency_holds_for_every_m() {
        for m in 1..=5 {
            let passes = random_passes(m);
            let mono = mono_outputs(m, |s| passes.get(&s)).unwrap();
            let sum = mono.iter().skip(1).fold(mono[0].clone(), |a, b| (a + b).unwrap());
            let diff = max_abs(&(sum - &passes[&Subset::full(m)]).unwrap());
            assert!(diff < 1e-14, "M = {m}: Σ m_x differs from f(N) by {diff}");
        }
    }

    #[test]
    fn matches_reference_forms_for_two_and_three() {
        let p = random_passes(2);
        let f = |bits: u16| &p[&Subset::from_bits(bits)];
        let mono = mono_outputs(2, |s| p.get(&s)).unwrap();
        let ma = ((f(3) - f(2)).unwrap() + f(1)).unwrap().affine(0.5, 0.0).unwrap();
        assert!(max_abs(&(&mono[0] - ma).unwrap()) < 1e-15);

        let p = random_passes(3);
        let f = |bits: u16| &p[&Subset::from_bits(bits)];
        let mono = mono_outputs(3, |s| p.get(&s)).unwrap();
        // m_a = ⅓[T − f(vt) + f(a)] + ⅙[f(at) − f(v) + f(av) − f(t)] with a=1, v=2, t=4.
        let third = ((f(7) - f(6)).unwrap() + f(1)).unwrap().affine(1.0 / 3.0, 0.0).unwrap();
        let sixth = (((f(5) - f(2)).unwrap() + f(3)).unwrap() - f(4)).unwrap().affine(1.0 / 6.0, 0.0).unwrap();
        assert!(max_abs(&(&mono[0] - (third + sixth).unwrap()).unwrap()) < 1e-15);
    }

    #[test]
    fn exact_shapley_is_classical_value() {
        // With f(∅) included, φ_x must satisfy Σ φ_x = f(N) − f(∅).
        let m = 4;
        let p = random_passes(m);
        let mono = mono_outputs(m, |s| p.get(&s)).unwrap();
        let phi = exact_shapley(&mono, &p[&Subset::empty()]).unwrap();
        let sum = phi.iter().skip(1).fold(phi[0].clone(), |a, b| (a + b).unwrap());
        let expect = (&p[&Subset::full(m)] - &p[&Subset::empty()]).unwrap();
        assert!(max_abs(&(sum - expect).unwrap()) < 1e-14);
    }

    #[test]
    fn score_applies_the_floor() {
        let logits = Tensor::new(&[[0.0f64, 100.0], [0.0, 0.0]], &Device::Cpu).unwrap();
        let floored = score(&logits, &[0, 1], Some(1e-8)).unwrap();
        assert!((floored - (-(1e-8f64).ln() + 2f64.ln()) / 2.0).abs() < 1e-12);
        let raw = score(&logits, &[0, 1], None).unwrap();
        assert!((raw - (100.0 + 2f64.ln()) / 2.0).abs() < 1e-9);
    }

    #[test]
    fn subsets_and_weights() {
        assert_eq!(masked_subsets(3).len(), 6);
        assert!((shapley_weight(3, 1) - 1.0 / 6.0).abs() < 1e-16);
        assert!((shapley_weight(2, 0) - 0.5).abs() < 1e-16);
    }
}
