//! Every kernel on the wgpu runtime against its CPU reference, at awkward shapes.
//!
//! The `*_host` methods pre-fill their outputs with NaN, so "no NaN in the result" also proves
//! every output element was written. With no wgpu adapter these tests fail (never skip).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rtlab_kernels::reference::*;
use rtlab_kernels::{AdamWConfig, LoraDims};

mod common;
use common::*;

#[test]
fn matmul_all_transposes_and_accumulate() {
    let gpu = gpu();
    let mut rng = StdRng::seed_from_u64(10);
    for (m, k, n) in [(37, 70, 53), (65, 17, 129), (1, 1, 1), (3, 200, 2)] {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let a = rand_vec(&mut rng, m * k, 1.0);
            let b = rand_vec(&mut rng, k * n, 1.0);
            let c0 = rand_vec(&mut rng, m * n, 1.0);
            let want = matmul_reference(&a, ta, &b, tb, m, k, n);
            let ad = gpu.upload(&a, &if ta { [k, m] } else { [m, k] }).unwrap();
            let bd = gpu.upload(&b, &if tb { [n, k] } else { [k, n] }).unwrap();
            let c = gpu.full(&[m, n], f32::NAN);
            gpu.matmul_into(&ad, ta, &bd, tb, 0.5, &c, false).unwrap();
            let half: Vec<f32> = want.iter().map(|v| 0.5 * v).collect();
            let name = format!("matmul {m}x{k}x{n} ta={ta} tb={tb}");
            assert_close(&name, &gpu.download(&c).unwrap(), &half);

            let cd = gpu.upload(&c0, &[m, n]).unwrap();
            gpu.matmul_into(&ad, ta, &bd, tb, 2.0, &cd, true).unwrap();
            let acc: Vec<f32> = want.iter().zip(&c0).map(|(v, c)| c + 2.0 * v).collect();
            assert_close(
                &format!("{name} accumulate"),
                &gpu.download(&cd).unwrap(),
                &acc,
            );
        }
    }
}

const LORA_SHAPES: [LoraDims; 3] = [
    LoraDims {
        n: 37,
        d_in: 70,
        d_out: 53,
        r: 8,
    },
    LoraDims {
        n: 1,
        d_in: 129,
        d_out: 65,
        r: 3,
    },
    LoraDims {
        n: 100,
        d_in: 33,
        d_out: 130,
        r: 16,
    },
];

#[test]
fn lora_forward_matches_reference() {
    let gpu = gpu();
    let mut rng = StdRng::seed_from_u64(11);
    for d in LORA_SHAPES {
        let x = rand_vec(&mut rng, d.n * d.d_in, 1.0);
        let w = rand_vec(&mut rng, d.d_out * d.d_in, 0.2);
        let a = rand_vec(&mut rng, d.r * d.d_in, 0.2);
        let b = rand_vec(&mut rng, d.d_out * d.r, 0.2);
        let (y_ref, xa_ref) = lora_forward_reference(&x, &w, &a, &b, d, 2.0);
        let (y, xa) = gpu.lora_forward_host(&x, &w, &a, &b, d, 2.0).unwrap();
        assert_close(&format!("y {d:?}"), &y, &y_ref);
        assert_close(&format!("xa {d:?}"), &xa, &xa_ref);
    }
}

#[test]
fn lora_backward_matches_reference() {
    let gpu = gpu();
    let mut rng = StdRng::seed_from_u64(12);
    for d in LORA_SHAPES {
        let x = rand_vec(&mut rng, d.n * d.d_in, 1.0);
        let w = rand_vec(&mut rng, d.d_out * d.d_in, 0.2);
        let a = rand_vec(&mut rng, d.r * d.d_in, 0.2);
        let b = rand_vec(&mut rng, d.d_out * d.r, 0.2);
        let dy = rand_vec(&mut rng, d.n * d.d_out, 1.0);
        let (_, xa) = lora_forward_reference(&x, &w, &a, &b, d, 0.5);
        let want = lora_backward_reference(&x, &w, &a, &b, &xa, &dy, d, 0.5);
        let (dx, da, db) = gpu
            .lora_backward_host(&x, &w, &a, &b, &xa, &dy, d, 0.5)
            .unwrap();
        assert_close(&format!("dx {d:?}"), &dx, &want.dx);
        assert_close(&format!("da {d:?}"), &da, &want.da);
        assert_close(&format!("db {d:?}"), &db, &want.db);
    }
}

#[test]
fn rmsnorm_forward_and_backward_match_reference() {
    let gpu = gpu();
    let mut rng = StdRng::seed_from_u64(13);
    for (n, d) in [(37, 70), (5, 600), (1, 1), (300, 3)] {
        let x = rand_vec(&mut rng, n * d, 2.0);
        let w = rand_vec(&mut rng, d, 1.5);
        let dy = rand_vec(&mut rng, n * d, 1.0);
        let (y_ref, rstd_ref) = rmsnorm_forward_reference(&x, &w, n, d, 1e-5);
        let (y, rstd) = gpu.rmsnorm_forward_host(&x, &w, n, d, 1e-5).unwrap();
        assert_close(&format!("y {n}x{d}"), &y, &y_ref);
        assert_close(&format!("rstd {n}x{d}"), &rstd, &rstd_ref);
        let (dx_ref, dw_ref) = rmsnorm_backward_reference(&x, &w, &rstd_ref, &dy, n, d);
        let (dx, dw) = gpu
            .rmsnorm_backward_host(&x, &w, &rstd_ref, &dy, n, d)
            .unwrap();
        assert_close(&format!("dx {n}x{d}"), &dx, &dx_ref);
        assert_close(&format!("dw {n}x{d}"), &dw, &dw_ref);
    }
}

#[test]
fn rope_forward_and_backward_match_reference() {
    let gpu = gpu();
    let mut rng = StdRng::seed_from_u64(14);
    for (nt, nh, hd) in [(37, 3, 64), (5, 2, 6), (129, 1, 2)] {
        let positions: Vec<u32> = (0..nt).map(|_| rng.random_range(0..4096)).collect();
        let x = rand_vec(&mut rng, nt * nh * hd, 1.0);
        let (cos, sin) = rope_tables(&positions, hd, 10_000.0);
        let y_ref = rope_forward_reference(&x, &cos, &sin, nt, nh, hd);
        let dx_ref = rope_backward_reference(&x, &cos, &sin, nt, nh, hd);
        let y = gpu
            .rope_host(&x, &positions, nh, hd, 10_000.0, false)
            .unwrap();
        let dx = gpu
            .rope_host(&x, &positions, nh, hd, 10_000.0, true)
            .unwrap();
        assert_close(&format!("rope fwd {nt}x{nh}x{hd}"), &y, &y_ref);
        assert_close(&format!("rope bwd {nt}x{nh}x{hd}"), &dx, &dx_ref);
    }
}

#[test]
fn cross_entropy_matches_reference() {
    let gpu = gpu();
    let mut rng = StdRng::seed_from_u64(15);
    for (n, vocab) in [(37, 259), (3, 1000), (300, 7)] {
        let logits = rand_vec(&mut rng, n * vocab, 8.0);
        let targets: Vec<u32> = (0..n).map(|_| rng.random_range(0..vocab as u32)).collect();
        let mask: Vec<u32> = (0..n).map(|i| u32::from(i % 4 != 1)).collect();
        let (loss_ref, dl_ref) = cross_entropy_reference(&logits, &targets, &mask, n, vocab);
        let (loss, dl) = gpu
            .cross_entropy_host(&logits, &targets, &mask, n, vocab)
            .unwrap();
        assert_close(&format!("loss {n}x{vocab}"), &[loss], &[loss_ref]);
        assert_close(&format!("dlogits {n}x{vocab}"), &dl, &dl_ref);
    }
}

#[test]
fn cross_entropy_with_every_row_masked_is_zero() {
    let gpu = gpu();
    let logits = vec![1.0f32; 4 * 259];
    let (loss, dl) = gpu
        .cross_entropy_host(&logits, &[1, 2, 3, 4], &[0; 4], 4, 259)
        .unwrap();
    assert_eq!(loss, 0.0);
    assert!(
        dl.iter().all(|v| *v == 0.0),
        "masked rows get zero gradient"
    );
}

#[test]
fn cross_entropy_host_refuses_out_of_range_targets() {
    let err = gpu()
        .cross_entropy_host(&[0.0; 6], &[0, 3], &[1, 1], 2, 3)
        .unwrap_err();
    assert!(err.to_string().contains("row 1 has target 3"), "{err}");
}

#[test]
fn adamw_matches_reference_over_steps() {
    let gpu = gpu();
    let mut rng = StdRng::seed_from_u64(16);
    let len = 1031;
    let cfg = AdamWConfig {
        lr: 2e-3,
        weight_decay: 0.1,
        ..AdamWConfig::default()
    };
    let mut p_ref = rand_vec(&mut rng, len, 1.0);
    let (mut m_ref, mut v_ref) = (vec![0f32; len], vec![0f32; len]);
    let shape = [len];
    let p = gpu.upload(&p_ref, &shape).unwrap();
    let m = gpu.full(&shape, 0.0);
    let v = gpu.full(&shape, 0.0);
    for t in 1..=3 {
        let g = rand_vec(&mut rng, len, 1.0);
        adamw_reference(&mut p_ref, &g, &mut m_ref, &mut v_ref, &cfg, t);
        let gd = gpu.upload(&g, &shape).unwrap();
        gpu.adamw_step(&p, &gd, &m, &v, &cfg, t).unwrap();
        assert_close(
            &format!("param step {t}"),
            &gpu.download(&p).unwrap(),
            &p_ref,
        );
        assert_close(&format!("m step {t}"), &gpu.download(&m).unwrap(), &m_ref);
        assert_close(&format!("v step {t}"), &gpu.download(&v).unwrap(), &v_ref);
    }
    let (p1, _, _) = gpu
        .adamw_step_host(&[1.0], &[0.5], &[0.0], &[0.0], &cfg, 1)
        .unwrap();
    let mut want = [1.0f32];
    adamw_reference(&mut want, &[0.5], &mut [0.0], &mut [0.0], &cfg, 1);
    assert_close("host step", &p1, &want);
}

/// A whole LoRA training step kept on the device: RMSNorm → LoRA linear → cross-entropy →
/// LoRA backward → RMSNorm backward → AdamW on A and B, against the same chain on the CPU.
#[test]
fn training_step_on_device_matches_reference() {
    let gpu = gpu();
    let mut rng = StdRng::seed_from_u64(17);
    let d = LoraDims {
        n: 37,
        d_in: 70,
        d_out: 259,
        r: 8,
    };
    let (scale, eps) = (2.0, 1e-5);
    let cfg = AdamWConfig::default();
    let x = rand_vec(&mut rng, d.n * d.d_in, 1.0);
    let nw = rand_vec(&mut rng, d.d_in, 1.0);
    let w = rand_vec(&mut rng, d.d_out * d.d_in, 0.2);
    let mut a = rand_vec(&mut rng, d.r * d.d_in, 0.2);
    let mut b = rand_vec(&mut rng, d.d_out * d.r, 0.2);
    let targets: Vec<u32> = (0..d.n)
        .map(|_| rng.random_range(0..d.d_out as u32))
        .collect();
    let mask: Vec<u32> = (0..d.n).map(|i| u32::from(i % 5 != 0)).collect();

    // device
    let xd = gpu.upload(&x, &[d.n, d.d_in]).unwrap();
    let nwd = gpu.upload(&nw, &[d.d_in]).unwrap();
    let wd = gpu.upload(&w, &[d.d_out, d.d_in]).unwrap();
    let ad = gpu.upload(&a, &[d.r, d.d_in]).unwrap();
    let bd = gpu.upload(&b, &[d.d_out, d.r]).unwrap();
    let mask_f32: Vec<f32> = mask.iter().map(|&m| m as f32).collect();
    let (td, md) = (
        gpu.upload_indices(&targets),
        gpu.upload(&mask_f32, &[mask_f32.len()]).unwrap(),
    );
    let (h, rstd) = gpu.rmsnorm_forward(&xd, &nwd, eps).unwrap();
    let fwd = gpu.lora_forward(&h, &wd, &ad, &bd, scale).unwrap();
    let (loss, dlogits) = gpu.cross_entropy(&fwd.y, &td, &md).unwrap();
    let grads = gpu
        .lora_backward(&h, &wd, &ad, &bd, &fwd.xa, &dlogits, scale)
        .unwrap();
    let (dx, dnw) = gpu.rmsnorm_backward(&xd, &nwd, &rstd, &grads.dx).unwrap();
    let zeros = |shape: &[usize]| gpu.full(shape, 0.0);
    let (ma, va, mb, vb) = (
        zeros(&[d.r, d.d_in]),
        zeros(&[d.r, d.d_in]),
        zeros(&[d.d_out, d.r]),
        zeros(&[d.d_out, d.r]),
    );
    gpu.adamw_step(&ad, &grads.da, &ma, &va, &cfg, 1).unwrap();
    gpu.adamw_step(&bd, &grads.db, &mb, &vb, &cfg, 1).unwrap();

    // CPU
    let (h_ref, rstd_ref) = rmsnorm_forward_reference(&x, &nw, d.n, d.d_in, eps);
    let (y_ref, xa_ref) = lora_forward_reference(&h_ref, &w, &a, &b, d, scale);
    let (loss_ref, dl_ref) = cross_entropy_reference(&y_ref, &targets, &mask, d.n, d.d_out);
    let g_ref = lora_backward_reference(&h_ref, &w, &a, &b, &xa_ref, &dl_ref, d, scale);
    let (dx_ref, dnw_ref) = rmsnorm_backward_reference(&x, &nw, &rstd_ref, &g_ref.dx, d.n, d.d_in);
    let z = |len| (vec![0f32; len], vec![0f32; len]);
    let (mut ma_r, mut va_r) = z(a.len());
    adamw_reference(&mut a, &g_ref.da, &mut ma_r, &mut va_r, &cfg, 1);
    let (mut mb_r, mut vb_r) = z(b.len());
    adamw_reference(&mut b, &g_ref.db, &mut mb_r, &mut vb_r, &cfg, 1);

    assert_close("loss", &gpu.download(&loss).unwrap(), &[loss_ref]);
    assert_close("dlogits", &gpu.download(&dlogits).unwrap(), &dl_ref);
    assert_close("dx", &gpu.download(&dx).unwrap(), &dx_ref);
    assert_close("d norm weight", &gpu.download(&dnw).unwrap(), &dnw_ref);
    assert_close("A after AdamW", &gpu.download(&ad).unwrap(), &a);
    assert_close("B after AdamW", &gpu.download(&bd).unwrap(), &b);
}

#[test]
fn shape_errors_say_what_is_wrong() {
    let gpu = gpu();
    let x = gpu.full(&[3, 4], 1.0);
    let w = gpu.full(&[5, 3], 1.0);
    let a = gpu.full(&[2, 4], 1.0);
    let b = gpu.full(&[5, 2], 1.0);
    let err = gpu
        .lora_forward(&x, &w, &a, &b, 1.0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("w must be [5, 4]"), "{err}");
}

#[test]
fn nan_prefill_really_fills() {
    // The NaN pre-fill is what makes "no NaN in the result" prove every element was written.
    let gpu = gpu();
    let t = gpu.full(&[3, 259], f32::NAN);
    assert!(gpu.download(&t).unwrap().iter().all(|v| v.is_nan()));
}

#[test]
fn grids_past_65535_cubes_cover_every_element() {
    // More cubes than one grid dimension holds: the launch splits the grid in two dimensions and
    // the kernels index it linearly.
    let gpu = gpu();
    let mut rng = StdRng::seed_from_u64(18);
    let (n, d) = (70_000, 3); // one cube per row
    let x = rand_vec(&mut rng, n * d, 1.0);
    let w = rand_vec(&mut rng, d, 1.0);
    let (y_ref, rstd_ref) = rmsnorm_forward_reference(&x, &w, n, d, 1e-5);
    let (y, rstd) = gpu.rmsnorm_forward_host(&x, &w, n, d, 1e-5).unwrap();
    assert_close("rmsnorm y, 70k rows", &y, &y_ref);
    assert_close("rmsnorm rstd, 70k rows", &rstd, &rstd_ref);

    let len = 65_535 * 256 + 77; // element-wise, 256 per cube
    let t = gpu.full(&[len], f32::NAN);
    gpu.fill(&t, 3.0);
    let back = gpu.download(&t).unwrap();
    assert!(
        back.iter().all(|v| *v == 3.0),
        "every element of a {len}-long fill written"
    );
}
