//! `Gpu::cuda` on whatever machine runs the tests, in a `cuda` build.
//!
//! Without a CUDA driver, asking for the device must fail promptly with the "no CUDA driver" error:
//! no panic, no hang. With one, the same test opens the device and runs kernels against their CPU
//! references instead, so it cannot pass merely because the machine has no GPU. Whether the
//! driver is there is asked of dlopen here, not of the code under test.
#![cfg(all(feature = "cuda", target_os = "linux"))]

use std::ffi::CString;
use std::sync::mpsc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rtlab_kernels::reference::*;
use rtlab_kernels::{Gpu, KernelError};

mod common;
use common::*;

/// Longer than bringing up a real device takes (NVRTC compiles on launch, not here).
const OPEN_TIMEOUT: Duration = Duration::from_secs(120);

/// Whether the NVIDIA driver's library loads: `libcuda.so.1` is the name the driver installs,
/// `libcuda.so` the development symlink.
fn libcuda_loads() -> bool {
    ["libcuda.so.1", "libcuda.so"].iter().any(|name| {
        let name = CString::new(*name).unwrap();
        // SAFETY: dlopen with a NUL-terminated name; a handle it returns is closed at once.
        unsafe {
            let handle = libc::dlopen(name.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL);
            if handle.is_null() {
                return false;
            }
            libc::dlclose(handle);
            true
        }
    })
}

/// `Gpu::cuda(0)` on another thread, so that a hang fails the test instead of stalling it, and a
/// panic is reported as such rather than as some later assertion.
fn open_cuda() -> Result<Gpu, KernelError> {
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let _ = tx.send(Gpu::cuda(0));
    });
    match rx.recv_timeout(OPEN_TIMEOUT) {
        Ok(result) => result,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("Gpu::cuda(0) did not return within {OPEN_TIMEOUT:?}")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            let panic = worker
                .join()
                .expect_err("the sender only drops early on a panic");
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("Gpu::cuda(0) panicked instead of returning an error: {msg}")
        }
    }
}

#[test]
fn cuda_device_errors_without_a_driver_and_runs_kernels_with_one() {
    if libcuda_loads() {
        let gpu = open_cuda()
            .unwrap_or_else(|e| panic!("libcuda loads here, so CUDA device 0 must open: {e}"));
        assert_eq!(gpu.runtime(), "cuda");
        kernels_match_reference(&gpu);
    } else {
        let err = match open_cuda() {
            Ok(gpu) => panic!("libcuda does not load here, yet Gpu::cuda(0) gave {gpu:?}"),
            Err(err) => err,
        };
        assert!(
            matches!(err, KernelError::NoCudaDriver { .. }),
            "want NoCudaDriver, got {err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.starts_with("no CUDA driver (libcuda.so) found: "),
            "message: {msg}"
        );
        assert!(
            msg.contains("libcuda.so.1"),
            "the message names what was tried: {msg}"
        );
    }
}

/// A few kernels on the device against their CPU references: a tiled matmul, and row reductions
/// through shared memory (RMSNorm's sum, cross-entropy's max and sum).
fn kernels_match_reference(gpu: &Gpu) {
    let mut rng = StdRng::seed_from_u64(40);

    let (m, k, n) = (37, 70, 53);
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let a = rand_vec(&mut rng, m * k, 1.0);
        let b = rand_vec(&mut rng, k * n, 1.0);
        let want = matmul_reference(&a, ta, &b, tb, m, k, n);
        let ad = gpu.upload(&a, &if ta { [k, m] } else { [m, k] }).unwrap();
        let bd = gpu.upload(&b, &if tb { [n, k] } else { [k, n] }).unwrap();
        let c = gpu.full(&[m, n], f32::NAN);
        gpu.matmul_into(&ad, ta, &bd, tb, 1.0, &c, false).unwrap();
        let name = format!("cuda matmul {m}x{k}x{n} ta={ta} tb={tb}");
        assert_close(&name, &gpu.download(&c).unwrap(), &want);
    }

    let (rows, d) = (37, 600);
    let x = rand_vec(&mut rng, rows * d, 2.0);
    let w = rand_vec(&mut rng, d, 1.5);
    let (y_ref, rstd_ref) = rmsnorm_forward_reference(&x, &w, rows, d, 1e-5);
    let (y, rstd) = gpu.rmsnorm_forward_host(&x, &w, rows, d, 1e-5).unwrap();
    assert_close("cuda rmsnorm y", &y, &y_ref);
    assert_close("cuda rmsnorm rstd", &rstd, &rstd_ref);

    let (rows, vocab) = (37, 259);
    let logits = rand_vec(&mut rng, rows * vocab, 8.0);
    let targets: Vec<u32> = (0..rows)
        .map(|_| rng.random_range(0..vocab as u32))
        .collect();
    let mask: Vec<u32> = (0..rows).map(|i| u32::from(i % 4 != 1)).collect();
    let (loss_ref, dl_ref) = cross_entropy_reference(&logits, &targets, &mask, rows, vocab);
    let (loss, dl) = gpu
        .cross_entropy_host(&logits, &targets, &mask, rows, vocab)
        .unwrap();
    assert_close("cuda cross-entropy loss", &[loss], &[loss_ref]);
    assert_close("cuda cross-entropy dlogits", &dl, &dl_ref);
}
