//! What a training forward keeps per layer, counted by the allocator, against the estimate that
//! `gradient_checkpointing: "auto"` budgets with ([`CausalLm::graph_bytes_per_layer`]).
//!
//! Its own test binary: the global allocator below counts every live byte of the process, so
//! nothing else may run beside the one test.

use candle_core::{DType, Device, Tensor};
use rtlab_model::config::{Arch, ModelConfig};
use rtlab_model::model::{load_weights, CausalLm, LoraSpec, Pass, ALL_TARGETS};
use rtlab_model::tiny::{self, TinySpec};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

/// The system allocator, counting the bytes live.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        LIVE.fetch_add(n as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// One model's shape and adapters, and the batch it trains on.
#[derive(Debug, Clone, Copy)]
struct Case {
    arch: Arch,
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    intermediate: usize,
    r: usize,
    dropout: f64,
    targets: &'static [&'static str],
    dtype: DType,
    batch: usize,
    width: usize,
}

fn model(case: &Case, layers: usize) -> (tempfile::TempDir, CausalLm) {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinySpec {
        arch: case.arch,
        hidden: case.hidden,
        layers,
        heads: case.heads,
        kv_heads: case.kv_heads,
        intermediate: case.intermediate,
        max_positions: 512,
        seed: 3,
    };
    tiny::create(dir.path(), &spec).unwrap();
    let cfg = ModelConfig::from_dir(dir.path()).unwrap();
    let w = load_weights(dir.path(), case.dtype, &Device::Cpu).unwrap();
    let lora = LoraSpec {
        r: case.r,
        alpha: 2.0 * case.r as f64,
        dropout: case.dropout,
        target_modules: case.targets.iter().map(|s| s.to_string()).collect(),
        use_rslora: false,
    };
    let m = CausalLm::new(cfg, w, Some(&lora), 7, case.dtype, &Device::Cpu).unwrap();
    (dir, m)
}

/// Bytes still live after a training forward of `layers` layers, while its output (and so its graph)
/// is held.
fn kept_by_forward(case: &Case, layers: usize) -> isize {
    let (_dir, m) = model(case, layers);
    let tokens: Vec<u32> = (0..case.batch * case.width)
        .map(|i| (i % 200) as u32 + 1)
        .collect();
    let ids = Tensor::from_vec(tokens, (case.batch, case.width), &Device::Cpu).unwrap();
    let before = LIVE.load(Ordering::SeqCst);
    let out = m
        .target_log_probs(&ids, &ids, &mut Pass::training(1))
        .unwrap();
    let after = LIVE.load(Ordering::SeqCst);
    drop(out);
    after - before
}

/// One layer's graph: the difference between a 4-layer and a 2-layer model's forward, halved (the
/// embedding, the head and what the forward allocates once cancel out). Measured after a warm-up of
/// the same shape, so that buffers kept between calls (the pool's, gemm's) are already there.
fn kept_per_layer(case: &Case) -> u64 {
    kept_by_forward(case, 4);
    kept_by_forward(case, 2);
    ((kept_by_forward(case, 4) - kept_by_forward(case, 2)) / 2) as u64
}

#[test]
fn the_checkpointing_budget_covers_what_a_layers_graph_keeps_and_not_much_more() {
    let all: &[&str] = &ALL_TARGETS;
    let base = Case {
        arch: Arch::Llama,
        hidden: 64,
        heads: 4,
        kv_heads: 2,
        intermediate: 160,
        r: 4,
        dropout: 0.1,
        targets: all,
        dtype: DType::F32,
        batch: 4,
        width: 64,
    };
    let cases = [
        base,
        Case {
            batch: 2,
            width: 32,
            ..base
        },
        Case { width: 128, ..base },
        Case {
            dropout: 0.0,
            ..base
        },
        Case { r: 16, ..base },
        Case {
            hidden: 128,
            ..base
        },
        Case {
            intermediate: 320,
            ..base
        },
        Case { heads: 8, ..base },
        Case {
            kv_heads: 4,
            ..base
        },
        Case {
            targets: &["q_proj", "v_proj"],
            ..base
        },
        Case {
            arch: Arch::Qwen2,
            ..base
        },
        Case {
            dtype: DType::F64,
            ..base
        },
    ];
    let mut wrong = Vec::new();
    for case in cases {
        let kept = kept_per_layer(&case);
        let (_dir, m) = model(&case, 4);
        let estimate = m.graph_bytes_per_layer(case.batch, case.width);
        println!("{:.3} {case:?}", estimate as f64 / kept as f64);
        if estimate < kept || estimate as f64 > 1.35 * kept as f64 {
            wrong.push(format!(
                "{case:?}: a layer's graph keeps {kept} bytes, the estimate says {estimate}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
