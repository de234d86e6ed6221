//! Statistics a benchmark result can stand on: bootstrap confidence intervals over problems, and
//! paired tests of two runs on the same problems (a paired bootstrap, and McNemar's exact test).
//!
//! Problems, not samples, are the unit: samples of one problem are not independent, so every
//! resampling draws whole problems, as Chen et al. and the VerilogEval papers do.

use rand::{Rng, SeedableRng};

/// The settings of a resampling.
#[derive(Debug, Clone, Copy)]
pub struct Resampling {
    pub resamples: usize,
    pub confidence: f64,
    pub seed: u64,
}

impl Default for Resampling {
    fn default() -> Self {
        Resampling {
            resamples: 10_000,
            confidence: 0.95,
            seed: 0,
        }
    }
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len().max(1) as f64
}

/// The `q` quantile of sorted values, by linear interpolation (numpy's default).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Means of `resamples` bootstrap resamples of the per-problem values `f(i)`, sorted.
fn bootstrap_means(n: usize, r: &Resampling, f: impl Fn(usize) -> f64) -> Vec<f64> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(r.seed);
    let mut means: Vec<f64> = (0..r.resamples)
        .map(|_| (0..n).map(|_| f(rng.random_range(0..n))).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    means
}

/// The percentile bootstrap interval of the mean of per-problem values.
pub fn bootstrap_ci(values: &[f64], r: &Resampling) -> (f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let means = bootstrap_means(values.len(), r, |i| values[i]);
    let tail = (1.0 - r.confidence) / 2.0;
    (quantile(&means, tail), quantile(&means, 1.0 - tail))
}

/// What a paired test of B against A gives.
#[derive(Debug, Clone, PartialEq)]
pub struct Paired {
    pub a: f64,
    pub b: f64,
    /// mean(B) − mean(A).
    pub delta: f64,
    pub ci: (f64, f64),
    /// Two-sided p-value of "no difference".
    pub p_value: f64,
    /// McNemar: problems only A passes, and only B passes.
    pub discordant: Option<(usize, usize)>,
}

/// The paired bootstrap (Koehn 2004, Efron & Tibshirani ch. 16): resample problems, recompute the
/// mean difference; the interval is the percentile one, and the p-value is the share of resampled
/// differences at least as far from the observed one as the observed is from 0 (the resampled
/// distribution shifted to the null).
pub fn paired_bootstrap(a: &[f64], b: &[f64], r: &Resampling) -> Paired {
    let n = a.len();
    let diffs: Vec<f64> = a.iter().zip(b).map(|(x, y)| y - x).collect();
    let delta = mean(&diffs);
    let means = bootstrap_means(n, r, |i| diffs[i]);
    let tail = (1.0 - r.confidence) / 2.0;
    let extreme = means
        .iter()
        .filter(|m| (*m - delta).abs() >= delta.abs() - 1e-12)
        .count();
    Paired {
        a: mean(a),
        b: mean(b),
        delta,
        ci: (quantile(&means, tail), quantile(&means, 1.0 - tail)),
        p_value: ((extreme + 1) as f64 / (r.resamples + 1) as f64).min(1.0),
        discordant: None,
    }
}

/// ln C(n, k), exact enough for the binomial tails McNemar needs (n up to millions).
fn ln_choose(n: usize, k: usize) -> f64 {
    let k = k.min(n - k);
    (0..k)
        .map(|i| ((n - i) as f64).ln() - ((i + 1) as f64).ln())
        .sum()
}

/// McNemar's exact test on paired pass/fail outcomes: under "no difference" each discordant problem
/// (one run passes, the other fails) is a fair coin, so the p-value is the two-sided binomial tail
/// `min(1, 2·P(X ≤ min(a_only, b_only)))`, X ~ Bin(a_only + b_only, 1/2), as statsmodels'
/// `mcnemar(exact=True)` computes it. The interval is Wald's for a paired difference of proportions.
pub fn mcnemar(a: &[bool], b: &[bool], confidence: f64) -> Paired {
    let n = a.len();
    let a_only = a.iter().zip(b).filter(|(x, y)| **x && !**y).count();
    let b_only = a.iter().zip(b).filter(|(x, y)| !**x && **y).count();
    let discordant = a_only + b_only;
    let p_value = if discordant == 0 {
        1.0
    } else {
        let low = a_only.min(b_only);
        let tail: f64 = (0..=low)
            .map(|i| (ln_choose(discordant, i) - discordant as f64 * std::f64::consts::LN_2).exp())
            .sum();
        (2.0 * tail).min(1.0)
    };
    let rate = |xs: &[bool]| xs.iter().filter(|x| **x).count() as f64 / n.max(1) as f64;
    let nf = n.max(1) as f64;
    let delta = (b_only as f64 - a_only as f64) / nf;
    let se = ((discordant as f64) - (b_only as f64 - a_only as f64).powi(2) / nf)
        .max(0.0)
        .sqrt()
        / nf;
    let z = normal_quantile(1.0 - (1.0 - confidence) / 2.0);
    Paired {
        a: rate(a),
        b: rate(b),
        delta,
        ci: (delta - z * se, delta + z * se),
        p_value,
        discordant: Some((a_only, b_only)),
    }
}

/// The standard normal quantile (Acklam's rational approximation, |error| < 1.2e-9).
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.38357751867269e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e1,
        1.615858368580409e2,
        -1.556989798598866e2,
        6.680131188771972e1,
        -1.328068155288572e1,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-3,
        3.224671290700398e-1,
        2.445134137142996,
        3.754408661907416,
    ];
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// McNemar by hand: 10 discordant problems, 2 only A passes, 8 only B passes:
    /// P(X ≤ 2) = (C(10,0) + C(10,1) + C(10,2)) / 2¹⁰ = 56/1024, p = 112/1024 = 0.109375.
    #[test]
    fn mcnemar_matches_the_exact_binomial_worked_by_hand() {
        let mut a = vec![true; 5];
        let mut b = vec![true; 5];
        a.extend([true, true]);
        b.extend([false, false]);
        a.extend([false; 8]);
        b.extend([true; 8]);
        a.extend([false; 5]);
        b.extend([false; 5]);
        let t = mcnemar(&a, &b, 0.95);
        assert_eq!(t.discordant, Some((2, 8)));
        assert!((t.p_value - 112.0 / 1024.0).abs() < 1e-12, "{}", t.p_value);
        assert!((t.delta - 6.0 / 20.0).abs() < 1e-12);
        assert!((t.a - 7.0 / 20.0).abs() < 1e-12 && (t.b - 13.0 / 20.0).abs() < 1e-12);
        // 1 vs 12 discordant: 2·(1 + 13)/2¹³ = 28/8192.
        let a: Vec<bool> = (0..13).map(|i| i == 0).collect();
        let b: Vec<bool> = (0..13).map(|i| i != 0).collect();
        assert!((mcnemar(&a, &b, 0.95).p_value - 28.0 / 8192.0).abs() < 1e-12);
        // Equal discordant counts: p = 1, not more.
        assert_eq!(mcnemar(&[true, false], &[false, true], 0.95).p_value, 1.0);
        assert_eq!(
            mcnemar(&[true], &[true], 0.95).p_value,
            1.0,
            "no discordant pair"
        );
    }

    #[test]
    fn the_normal_quantile_is_the_one_tables_give() {
        assert!((normal_quantile(0.975) - 1.959963984540054).abs() < 1e-8);
        assert!((normal_quantile(0.5)).abs() < 1e-12);
        assert!((normal_quantile(0.005) + 2.5758293035489).abs() < 1e-8);
    }

    #[test]
    fn the_bootstrap_interval_covers_the_mean_and_narrows_with_more_problems() {
        let r = Resampling::default();
        let small: Vec<f64> = (0..20).map(|i| (i % 2) as f64).collect();
        let big: Vec<f64> = (0..2000).map(|i| (i % 2) as f64).collect();
        let (lo, hi) = bootstrap_ci(&small, &r);
        let (blo, bhi) = bootstrap_ci(&big, &r);
        assert!(lo < 0.5 && 0.5 < hi, "({lo}, {hi})");
        assert!(bhi - blo < (hi - lo) / 5.0, "√100 = 10× narrower, roughly");
        // The binomial's normal interval for 2000 fair coins: ±1.96·√(0.25/2000) = ±0.0219.
        assert!(((bhi - blo) / 2.0 - 0.0219).abs() < 0.003, "({blo}, {bhi})");
        assert_eq!(bootstrap_ci(&small, &r), bootstrap_ci(&small, &r), "seeded");
    }

    #[test]
    fn the_paired_bootstrap_finds_a_real_gain_and_no_gain_where_there_is_none() {
        let r = Resampling::default();
        let a: Vec<f64> = (0..60).map(|i| (i % 3 == 0) as u8 as f64).collect();
        let better: Vec<f64> = (0..60).map(|i| (i % 3 != 2) as u8 as f64).collect();
        let t = paired_bootstrap(&a, &better, &r);
        assert!((t.delta - 20.0 / 60.0).abs() < 1e-12);
        assert!(t.p_value < 0.001 && t.ci.0 > 0.0, "{t:?}");
        let shuffled: Vec<f64> = (0..60).map(|i| ((i + 1) % 3 == 0) as u8 as f64).collect();
        let t = paired_bootstrap(&a, &shuffled, &r);
        assert_eq!(t.delta, 0.0);
        assert!(t.p_value > 0.5 && t.ci.0 < 0.0 && t.ci.1 > 0.0, "{t:?}");
    }
}
