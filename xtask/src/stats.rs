//! Means with Student-t 95% confidence intervals over seeds, for `cargo xtask study`.

use serde::{Deserialize, Serialize};

/// The 0.975 quantile of Student's t distribution for 1..=30 degrees of freedom (the two-sided
/// 95% critical value), to six decimals.
const T_975: [f64; 30] = [
    12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157, 2.228139, 2.200985,
    2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922, 2.093024, 2.085963, 2.079614, 2.073873,
    2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272,
];

/// The 0.975 quantile of the standard normal distribution.
const Z_975: f64 = 1.959_963_984_540_054;

/// The two-sided 95% critical value of Student's t with `df` degrees of freedom: the table up to
/// 30, beyond it the Cornish-Fisher expansion around the normal quantile (error below 1e-6).
pub fn t_975(df: usize) -> f64 {
    assert!(df >= 1, "Student's t needs at least one degree of freedom");
    if df <= T_975.len() {
        return T_975[df - 1];
    }
    let (z, v) = (Z_975, df as f64);
    let z2 = z * z;
    z + z * (z2 + 1.0) / (4.0 * v)
        + z * (5.0 * z2 * z2 + 16.0 * z2 + 3.0) / (96.0 * v * v)
        + z * (3.0 * z2.powi(3) + 19.0 * z2 * z2 + 17.0 * z2 - 15.0) / (384.0 * v.powi(3))
        + z * (79.0 * z2.powi(4) + 776.0 * z2.powi(3) + 1482.0 * z2 * z2 - 1920.0 * z2 - 945.0) / (92160.0 * v.powi(4))
}

/// A mean over `n` values with the half-width of its 95% confidence interval (Student t with
/// `n - 1` degrees of freedom); no interval for fewer than two values.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeanCi {
    pub n: usize,
    pub mean: f64,
    pub half_width: Option<f64>,
}

impl MeanCi {
    /// Over the finite values of `xs` (NaN for an empty set).
    pub fn of(xs: &[f64]) -> Self {
        let v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
        let n = v.len();
        if n == 0 {
            return Self { n, mean: f64::NAN, half_width: None };
        }
        let mean = v.iter().sum::<f64>() / n as f64;
        let half_width = (n >= 2).then(|| {
            let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            t_975(n - 1) * (var / n as f64).sqrt()
        });
        Self { n, mean, half_width }
    }

    /// `mean ± half-width`, both times `scale`, with `decimals` decimals; `n/a` when empty.
    pub fn show(&self, scale: f64, decimals: usize) -> String {
        if self.n == 0 {
            return "n/a".into();
        }
        match self.half_width {
            Some(h) => format!("{:.*} ± {:.*}", decimals, scale * self.mean, decimals, scale * h),
            None => format!("{:.*}", decimals, scale * self.mean),
        }
    }

    /// Like [`MeanCi::show`] with a sign on the mean (for differences).
    pub fn show_signed(&self, scale: f64, decimals: usize) -> String {
        if self.n == 0 {
            return "n/a".into();
        }
        match self.half_width {
            Some(h) => format!("{:+.*} ± {:.*}", decimals, scale * self.mean, decimals, scale * h),
            None => format!("{:+.*}", decimals, scale * self.mean),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ln Γ of a positive multiple of 1/2, by the recurrence from Γ(1) = 1 and Γ(1/2) = √π.
    fn ln_gamma_half(x: f64) -> f64 {
        let (mut g, mut k) = if x.fract() == 0.0 { (0.0, 1.0) } else { (0.5 * std::f64::consts::PI.ln(), 0.5) };
        while k < x {
            g += f64::ln(k);
            k += 1.0;
        }
        g
    }

    /// P(|T| <= q) for Student's t with `df` degrees of freedom, by Simpson's rule on the density.
    fn central_mass(df: usize, q: f64) -> f64 {
        let v = df as f64;
        let c = (ln_gamma_half((v + 1.0) / 2.0) - ln_gamma_half(v / 2.0)).exp() / (v * std::f64::consts::PI).sqrt();
        let f = |t: f64| c * (1.0 + t * t / v).powf(-(v + 1.0) / 2.0);
        let n = 20_000;
        let h = q / n as f64;
        let inner: f64 = (1..n).map(|i| if i % 2 == 1 { 4.0 } else { 2.0 } * f(i as f64 * h)).sum();
        2.0 * h / 3.0 * (f(0.0) + inner + f(q))
    }

    #[test]
    fn the_t_quantiles_leave_five_percent_in_the_tails() {
        // Closed forms: Cauchy for one degree of freedom, and t² = 2p²/(1 - p²) for two.
        assert!((t_975(1) - (0.475 * std::f64::consts::PI).tan()).abs() < 1e-6);
        assert!((t_975(2) - (2.0 * 0.95f64.powi(2) / (1.0 - 0.95f64.powi(2))).sqrt()).abs() < 1e-6);
        for df in (1..=40).chain([60, 120, 1000]) {
            let mass = central_mass(df, t_975(df));
            assert!((mass - 0.95).abs() < 2e-7, "df {df}: P(|T| <= {}) = {mass}", t_975(df));
        }
        assert!((t_975(1_000_000) - Z_975).abs() < 1e-5);
    }

    #[test]
    fn mean_and_interval_on_hand_cases() {
        // 1..5: mean 3, s = sqrt(2.5), se = s / sqrt(5) = sqrt(0.5), t(4) = 2.776445.
        let ci = MeanCi::of(&[1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!((ci.n, ci.mean), (5, 3.0));
        assert!((ci.half_width.unwrap() - 2.776445 * 0.5f64.sqrt()).abs() < 1e-12);
        assert_eq!(ci.show(1.0, 2), "3.00 ± 1.96");
        // 0.90, 0.92, 0.94: s = 0.02, se = 0.02 / sqrt(3), t(2) = 4.302653: 92.00 ± 4.97 (%).
        let ci = MeanCi::of(&[0.90, 0.92, 0.94]);
        assert!((ci.mean - 0.92).abs() < 1e-15);
        assert!((ci.half_width.unwrap() - 4.302653 * 0.02 / 3f64.sqrt()).abs() < 1e-12);
        assert_eq!(ci.show(100.0, 2), "92.00 ± 4.97");
        assert_eq!(MeanCi::of(&[-0.01, -0.03]).show_signed(100.0, 1), "-2.0 ± 12.7");
        // One value: no interval; none: n/a; NaN is skipped.
        assert_eq!(MeanCi::of(&[0.5]).half_width, None);
        assert_eq!(MeanCi::of(&[0.5]).show(100.0, 1), "50.0");
        assert_eq!(MeanCi::of(&[]).show(1.0, 1), "n/a");
        assert_eq!(MeanCi::of(&[f64::NAN, 2.0, 4.0]).n, 2);
    }
}
