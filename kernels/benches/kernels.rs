//! wgpu kernels vs the CPU references, same run, same shapes.
//!
//! Times (median of a few runs, after a warm-up that compiles the kernels):
//! 1. LoRA linear forward + backward,
//! 2. a full training step: RMSNorm → LoRA linear → RoPE → cross-entropy → RoPE backward → LoRA
//!    backward → RMSNorm backward → AdamW on A and B, all buffers kept on the device.
//!
//! `cargo bench -p rtlab-kernels --bench kernels`; `RTLAB_BENCH_ITERS=N` sets the runs (default 5).
//! On lavapipe (software Vulkan) the "GPU" is the same two CPU cores, so a ratio below 1 is
//! expected there.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rtlab_kernels::reference::*;
use rtlab_kernels::{AdamWConfig, Gpu, LoraDims};

const D: LoraDims = LoraDims {
    n: 256,
    d_in: 896,
    d_out: 896,
    r: 64,
};
const HEADS: usize = 14;
const HEAD_DIM: usize = 64;
const SCALE: f32 = 2.0;
const EPS: f32 = 1e-6;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time(iters: usize, mut f: impl FnMut()) -> Duration {
    f(); // warm-up: kernel compilation, allocator pools
    median(
        (0..iters)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect(),
    )
}

fn report(name: &str, gpu: Duration, cpu: Duration) {
    println!(
        "{name:<34} wgpu {:>9.2} ms   cpu-ref {:>9.2} ms   cpu/wgpu = {:.2}x",
        gpu.as_secs_f64() * 1e3,
        cpu.as_secs_f64() * 1e3,
        cpu.as_secs_f64() / gpu.as_secs_f64()
    );
}

fn main() {
    let iters: usize = std::env::var("RTLAB_BENCH_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
        .max(1);
    let gpu = Gpu::wgpu().unwrap_or_else(|e| panic!("the benchmark needs a wgpu adapter: {e}"));
    println!(
        "shape n={} d_in={} d_out={} r={} (RoPE {HEADS}x{HEAD_DIM}, vocab {}), {iters} runs, device {:?}",
        D.n, D.d_in, D.d_out, D.r, D.d_out, gpu
    );
    let inputs = Inputs::seeded(0);
    lora_linear(&gpu, &inputs, iters);
    full_step(&gpu, &inputs, iters);
}

/// The seeded host inputs both measurements share.
struct Inputs {
    x: Vec<f32>,
    nw: Vec<f32>,
    w: Vec<f32>,
    a: Vec<f32>,
    b: Vec<f32>,
    dy: Vec<f32>,
    targets: Vec<u32>,
    mask: Vec<u32>,
    positions: Vec<u32>,
}

impl Inputs {
    fn seeded(seed: u64) -> Inputs {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut rand_vec = |len: usize, s: f32| -> Vec<f32> {
            (0..len).map(|_| rng.random_range(-s..s)).collect()
        };
        Inputs {
            x: rand_vec(D.n * D.d_in, 1.0),
            nw: rand_vec(D.d_in, 1.0),
            w: rand_vec(D.d_out * D.d_in, 0.05),
            a: rand_vec(D.r * D.d_in, 0.05),
            b: rand_vec(D.d_out * D.r, 0.05),
            dy: rand_vec(D.n * D.d_out, 1.0),
            targets: (0..D.n as u32)
                .map(|i| (i * 7919) % D.d_out as u32)
                .collect(),
            mask: (0..D.n).map(|i| u32::from(i % 8 != 0)).collect(),
            positions: (0..D.n as u32).collect(),
        }
    }
}

/// 1. LoRA forward + backward of one linear layer.
fn lora_linear(gpu: &Gpu, inputs: &Inputs, iters: usize) {
    let Inputs { x, w, a, b, dy, .. } = inputs;
    let xd = gpu.upload(x, &[D.n, D.d_in]).unwrap();
    let wd = gpu.upload(w, &[D.d_out, D.d_in]).unwrap();
    let ad = gpu.upload(a, &[D.r, D.d_in]).unwrap();
    let bd = gpu.upload(b, &[D.d_out, D.r]).unwrap();
    let dyd = gpu.upload(dy, &[D.n, D.d_out]).unwrap();
    let g = time(iters, || {
        let f = gpu.lora_forward(&xd, &wd, &ad, &bd, SCALE).unwrap();
        let _g = gpu
            .lora_backward(&xd, &wd, &ad, &bd, &f.xa, &dyd, SCALE)
            .unwrap();
        gpu.sync().unwrap();
    });
    let c = time(iters, || {
        let (y, xa) = lora_forward_reference(x, w, a, b, D, SCALE);
        let g = lora_backward_reference(x, w, a, b, &xa, dy, D, SCALE);
        std::hint::black_box((y, g));
    });
    report("LoRA linear fwd+bwd", g, c);
}

/// 2. A whole training step: norm, LoRA, RoPE, cross-entropy, their backward, AdamW.
fn full_step(gpu: &Gpu, inputs: &Inputs, iters: usize) {
    let Inputs {
        x,
        nw,
        w,
        a,
        b,
        targets,
        mask,
        positions,
        ..
    } = inputs;
    let cfg = AdamWConfig::default();
    let xd = gpu.upload(x, &[D.n, D.d_in]).unwrap();
    let nwd = gpu.upload(nw, &[D.d_in]).unwrap();
    let wd = gpu.upload(w, &[D.d_out, D.d_in]).unwrap();
    let ad = gpu.upload(a, &[D.r, D.d_in]).unwrap();
    let bd = gpu.upload(b, &[D.d_out, D.r]).unwrap();
    let mask_f32: Vec<f32> = mask.iter().map(|&m| m as f32).collect();
    let (td, md) = (
        gpu.upload_indices(targets),
        gpu.upload(&mask_f32, &[mask_f32.len()]).unwrap(),
    );
    let (cos_d, sin_d) = gpu.rope_tables(positions, HEAD_DIM, 10_000.0).unwrap();
    let (cos, sin) = rope_tables(positions, HEAD_DIM, 10_000.0);
    let zeros = |shape: &[usize]| gpu.full(shape, 0.0);
    let (ma, va) = (zeros(&[D.r, D.d_in]), zeros(&[D.r, D.d_in]));
    let (mb, vb) = (zeros(&[D.d_out, D.r]), zeros(&[D.d_out, D.r]));
    let mut step = 0u32;
    let g = time(iters, || {
        step += 1;
        let (h, rstd) = gpu.rmsnorm_forward(&xd, &nwd, EPS).unwrap();
        let f = gpu.lora_forward(&h, &wd, &ad, &bd, SCALE).unwrap();
        let q = f.y.reshape(&[D.n, HEADS, HEAD_DIM]).unwrap();
        let qr = gpu.rope_forward(&q, &cos_d, &sin_d).unwrap();
        let logits = qr.reshape(&[D.n, D.d_out]).unwrap();
        let (loss, dlogits) = gpu.cross_entropy(&logits, &td, &md).unwrap();
        let dq = gpu
            .rope_backward(
                &dlogits.reshape(&[D.n, HEADS, HEAD_DIM]).unwrap(),
                &cos_d,
                &sin_d,
            )
            .unwrap();
        let dyy = dq.reshape(&[D.n, D.d_out]).unwrap();
        let grads = gpu
            .lora_backward(&h, &wd, &ad, &bd, &f.xa, &dyy, SCALE)
            .unwrap();
        let (_dx, _dnw) = gpu.rmsnorm_backward(&xd, &nwd, &rstd, &grads.dx).unwrap();
        gpu.adamw_step(&ad, &grads.da, &ma, &va, &cfg, step)
            .unwrap();
        gpu.adamw_step(&bd, &grads.db, &mb, &vb, &cfg, step)
            .unwrap();
        std::hint::black_box(gpu.download(&loss).unwrap()); // the one read-back a trainer does
    });
    let (mut a_c, mut b_c) = (a.clone(), b.clone());
    let (mut ma_c, mut va_c) = (vec![0f32; a.len()], vec![0f32; a.len()]);
    let (mut mb_c, mut vb_c) = (vec![0f32; b.len()], vec![0f32; b.len()]);
    let mut step_c = 0u32;
    let c = time(iters, || {
        step_c += 1;
        let (h, rstd) = rmsnorm_forward_reference(x, nw, D.n, D.d_in, EPS);
        let (y, xa) = lora_forward_reference(&h, w, &a_c, &b_c, D, SCALE);
        let logits = rope_forward_reference(&y, &cos, &sin, D.n, HEADS, HEAD_DIM);
        let (loss, dl) = cross_entropy_reference(&logits, targets, mask, D.n, D.d_out);
        let dyy = rope_backward_reference(&dl, &cos, &sin, D.n, HEADS, HEAD_DIM);
        let g = lora_backward_reference(&h, w, &a_c, &b_c, &xa, &dyy, D, SCALE);
        let (dx, dnw) = rmsnorm_backward_reference(x, nw, &rstd, &g.dx, D.n, D.d_in);
        adamw_reference(&mut a_c, &g.da, &mut ma_c, &mut va_c, &cfg, step_c);
        adamw_reference(&mut b_c, &g.db, &mut mb_c, &mut vb_c, &cfg, step_c);
        std::hint::black_box((loss, dx, dnw));
    });
    report("full step (norm/lora/rope/ce/adamw)", g, c);
}
