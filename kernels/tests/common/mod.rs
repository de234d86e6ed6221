//! Helpers the device test files share: the wgpu device (failing, never skipping, without one),
//! seeded inputs, and the comparison every kernel test makes.
#![allow(dead_code)]

use rand::rngs::StdRng;
use rand::Rng;
use rtlab_kernels::Gpu;

pub const TOL: f32 = 1e-4;

pub fn gpu() -> Gpu {
    Gpu::wgpu()
        .unwrap_or_else(|e| panic!("these tests need a wgpu adapter and must not be skipped: {e}"))
}

pub fn rand_vec(rng: &mut StdRng, len: usize, scale: f32) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-scale..scale)).collect()
}

/// Same length, no NaN (so every element was written), max |a − b| / max(1, |ref|) ≤ TOL.
pub fn assert_close(name: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    if let Some(i) = got.iter().position(|v| v.is_nan()) {
        panic!("{name}: element {i} is NaN (never written, or a NaN computed)");
    }
    let (mut worst, mut at) = (0f32, 0);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs() / w.abs().max(1.0);
        if err > worst {
            (worst, at) = (err, i);
        }
    }
    assert!(
        worst <= TOL,
        "{name}: relative error {worst} at {at} (got {}, want {})",
        got[at],
        want[at]
    );
}
