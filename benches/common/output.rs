//! Reading what a measured process printed.

/// The number on the line `KEY=VALUE` of `out`, or NaN when there is none (the table then shows
/// NaN, not a made-up figure).
pub fn value(out: &str, key: &str) -> f64 {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}
