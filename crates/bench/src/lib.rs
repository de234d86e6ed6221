//! Benchmarks: draw n samples per problem from a model, verify each against the problem's testbench,
//! and report the unbiased pass@k per problem, rates per category and VerilogEval's failure classes.
//! Every run is recorded in the workspace store; `runs()`, `compare()` and `expect()` read them back.
//! `preference_pairs` turns verified samples into DPO rows for TRL.
//!
//! The crate also holds [`testbench`]: A7 testbenches a model writes, accepted only if they kill
//! mutants. Both are "ask a model, verify what it wrote", so they share the crate and its prompts.

/// The identity of this crate's code (the hash of its sources and `Cargo.lock`): every result the
/// benchmark caches is keyed on it, so a changed build never serves an old answer.
pub fn code_identity() -> String {
    rtlab_core::provenance::code_identity("benchmark", env!("RTLAB_CODE_IDENTITY"))
}

pub mod api;
mod error;
pub mod judge;
pub mod metrics;
mod run;
pub mod stats;
pub mod sweep;
pub mod testbench;

pub use api::BenchPackage;
pub use error::BenchError;

const DEFAULT_TEMPLATE: &str = include_str!("../prompts/verilog_eval.md");

/// The unbiased estimator of Chen et al. (2021): 1 − C(n−c, k)/C(n, k), as a stable product.
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    if k > n || n == 0 {
        return f64::NAN;
    }
    if n - c < k {
        return 1.0;
    }
    let mut prob_all_fail = 1.0;
    for i in (n - c + 1)..=n {
        prob_all_fail *= 1.0 - k as f64 / i as f64;
    }
    1.0 - prob_all_fail
}

fn rate(xs: &[Option<bool>]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.iter().filter(|x| **x == Some(true)).count() as f64 / xs.len() as f64
}

fn round4(x: f64) -> f64 {
    (x * 10000.0).round() / 10000.0
}

pub use run::{run_benchmark, BenchOptions, BenchRun};

/// Category → metric name → value.
type CategoryMetrics = std::collections::BTreeMap<String, std::collections::BTreeMap<String, f64>>;

#[cfg(test)]
mod tests {
    use super::pass_at_k;

    #[test]
    fn pass_at_k_matches_hand_computed_values() {
        // n=10, c=3, k=1: 3/10.
        assert!((pass_at_k(10, 3, 1) - 0.3).abs() < 1e-12);
        // n=10, c=3, k=5: 1 - C(7,5)/C(10,5) = 1 - 21/252.
        assert!((pass_at_k(10, 3, 5) - (1.0 - 21.0 / 252.0)).abs() < 1e-12);
        // n=20, c=1, k=10: 1 - C(19,10)/C(20,10) = 1 - 10/20.
        assert!((pass_at_k(20, 1, 10) - 0.5).abs() < 1e-12);
        assert_eq!(pass_at_k(5, 0, 3), 0.0);
        assert_eq!(pass_at_k(5, 3, 3), 1.0);
        assert!(pass_at_k(3, 1, 5).is_nan(), "k > n is undefined");
    }
}
