//! The book's speed tables, rendered from the benches' results so that a number in the book is
//! always one a bench printed.
//!
//! A bench writes `target/bench-results/NAME.json` (`{"figures", "runs", "machine", "commit"}`,
//! `benches/common/results.rs`). `cargo run -p xtask -- bench-tables` copies each into
//! `book/src/results/bench/NAME.json` (committed: the record of the run the book quotes) and
//! rewrites every table of `book/src/performance.md` between `<!-- bench-table NAME -->` and
//! `<!-- /bench-table -->` with [`render`]. A test (`tests/integration/book.rs`) renders the same
//! from the committed files and fails when the book differs.

use serde_json::Value;

/// Where the committed results live, relative to the repository root.
pub const RESULTS_DIR: &str = "book/src/results/bench";
/// The chapter whose tables are rendered.
pub const CHAPTER: &str = "book/src/performance.md";

const OPEN: &str = "<!-- bench-table ";
const CLOSE: &str = "<!-- /bench-table -->";

/// The command that writes results file `name` (a bench may write several, one per part).
fn command_of(name: &str) -> String {
    match name.split_once('_') {
        Some(("gguf", part)) => format!("cargo bench --bench gguf -- {part}"),
        _ => format!("cargo bench --bench {name}"),
    }
}

/// The table (and the line naming the machine and commit) for bench `name` from its results.
pub fn render(name: &str, results: &Value) -> Result<String, String> {
    let command = command_of(name);
    let f = &results["figures"];
    let num = |v: &Value, key: &str| -> Result<f64, String> {
        v[key]
            .as_f64()
            .ok_or_else(|| format!("{name}.json: no number at figures.{key}: rerun `{command}`"))
    };
    let mut out = String::new();
    match name {
        "kernel" => {
            out.push_str("| what | goal | rtlab (median) | ipykernel, same run |\n");
            out.push_str("| --- | --- | --- | --- |\n");
            out.push_str(&format!(
                "| process start to the first `kernel_info_reply` | < 100 ms | **{:.1} ms** | {:.1} ms ({:.1}× slower) |\n",
                num(f, "kernel_start_ms")?,
                num(f, "ipykernel_start_ms")?,
                num(f, "kernel_start_vs_ipykernel")?
            ));
            out.push_str(&format!(
                "| `execute_request` of `1 + 1`, reply and outputs through `idle` | < 5 ms | **{:.2} ms** | |\n",
                num(f, "kernel_execute_round_trip_ms")?
            ));
        }
        "datasets" => {
            out.push_str(&format!(
                "| job ({} rows) | time | the Python loop, same run | ratio |\n",
                group_thousands(num(f, "rows")? as u64)
            ));
            out.push_str("| --- | --- | --- | --- |\n");
            let py = num(f, "python_loop_s")?;
            for (job, key, ratio) in [
                ("rtlab `load_jsonl` → `filter` → `value_counts` → `save_jsonl`", "load_jsonl_s", "load_jsonl_vs_python_loop"),
                ("rtlab `scan_jsonl` → `filter` → `sink_jsonl` + `select` → `collect` → `value_counts`", "scan_jsonl_s", "scan_jsonl_vs_python_loop"),
            ] {
                out.push_str(&format!(
                    "| {job} | **{:.3} s** | {py:.2} s | **{:.1}×** |\n",
                    num(f, key)?,
                    num(f, ratio)?
                ));
            }
            let polars = &f["polars_python"];
            if polars.is_object() {
                out.push_str("\n| the same job | rtlab | polars for Python, same run | rtlab's speedup (goal ≥ 2×) |\n");
                out.push_str("| --- | --- | --- | --- |\n");
                for (job, ours, theirs, ratio) in [
                    (
                        "eager: `load_jsonl` / `read_ndjson`",
                        "load_jsonl_s",
                        "polars_eager_s",
                        "load_jsonl_vs_polars_eager",
                    ),
                    (
                        "lazy: `scan_jsonl` / `scan_ndjson`",
                        "scan_jsonl_s",
                        "polars_lazy_s",
                        "scan_jsonl_vs_polars_lazy",
                    ),
                ] {
                    out.push_str(&format!(
                        "| {job} | {:.3} s | {:.3} s | **{:.2}×** |\n",
                        num(f, ours)?,
                        num(polars, theirs)?,
                        num(polars, ratio)?
                    ));
                }
            } else {
                out.push_str("\npolars for Python: not measured (its Python had no `polars`).\n");
            }
        }
        "verify" => {
            out.push_str(
                "| workload | run | wall | rows/s | system time | vs its sequential baseline |\n",
            );
            out.push_str("| --- | --- | --- | --- | --- | --- |\n");
            let cores = results["machine"]["cores"].as_f64().unwrap_or(1.0);
            for (workload, title) in [
                ("verilog_eval", "156 VerilogEval problems, all stages"),
                (
                    "dataset_rows",
                    "2,000 RTLCoder rows, all stages but simulation",
                ),
            ] {
                let w = &f[workload];
                if w.is_null() {
                    out.push_str(&format!(
                        "| {title} | not run (`RTLAB_BENCH_VERILOG_EVAL_ONLY`) | | | | |\n"
                    ));
                    continue;
                }
                let rows = num(w, "rows")?;
                for (run, key, base) in [
                    ("sequential baseline", "sequential", "sequential"),
                    ("`df.verify`", "parallel", "sequential"),
                    (
                        "sequential, rtlab holding a 1 GiB array",
                        "sequential_1gib",
                        "sequential_1gib",
                    ),
                    (
                        "`df.verify`, rtlab holding a 1 GiB array",
                        "parallel_1gib",
                        "sequential_1gib",
                    ),
                ] {
                    let wall = num(w, &format!("{key}_s"))?;
                    let ratio = num(w, &format!("{base}_s"))? / wall;
                    out.push_str(&format!(
                        "| {title} | {run} | {wall:.2} s | {:.1} | {:.2} s | {ratio:.2}× = {:.2} × cores |\n",
                        rows / wall,
                        num(w, &format!("{key}_sys_s"))?,
                        ratio / cores
                    ));
                }
                out.push_str(&format!(
                    "| {title} | cached rerun | {:.2} s | | | |\n",
                    num(w, "cached_s")?
                ));
            }
            let scaling = &f["machine_scaling"];
            if scaling.is_object() {
                out.push_str(&format!(
                    "\nThe machine itself, same run: one VerilogEval simulation (Prob144 in `vvp`) \
                     alone took {:.2} s, {:.0} copies at once {:.2} s to the last, so its cores gave purely \
                     CPU-bound work **{:.2} × cores**.\n",
                    num(scaling, "alone_s")?,
                    num(scaling, "processes")?,
                    num(scaling, "together_s")?,
                    num(scaling, "per_core")?
                ));
            }
        }
        "gguf_decode" => {
            let tokens = num(f, "tokens")?;
            out.push_str(&format!(
                "| decoding ({tokens:.0} new tokens) | rtlab's kernels | candle's kernels, same run |\n"
            ));
            out.push_str("| --- | --- | --- |\n");
            out.push_str(&format!(
                "| one stream, Q4_1 | **{:.1} tok/s** | {:.1} tok/s |\n",
                num(f, "single_tok_s")?,
                num(f, "single_candle_tok_s")?
            ));
            if let Some(small) = f["single_small_pages_tok_s"].as_f64() {
                out.push_str(&format!(
                    "| one stream, Q4_1, the weights on 4 KiB pages (`RTLAB_HUGE_PAGES=off`) | {small:.1} tok/s | |\n"
                ));
            }
            out.push_str(&format!(
                "| one stream, dequantized to f32 | {:.1} tok/s | |\n",
                num(f, "single_f32_tok_s")?
            ));
            out.push_str(&format!(
                "| 20 samples of one prompt as a batch (aggregate) | **{:.1} tok/s** | {:.1} tok/s |\n",
                num(f, "batch20_tok_s")?,
                num(f, "batch20_candle_tok_s")?
            ));
            if let Some(avx2) = f["batch20_avx2_tok_s"].as_f64() {
                out.push_str(&format!(
                    "| the same batch, AVX-512 kernels off (`RTLAB_QMATMUL=avx2`) | {avx2:.1} tok/s | |\n"
                ));
            }
            out.push_str(&format!(
                "| `decode_batch20_vs_single` (goal ≥ 8×) | **{:.2}×** | |\n",
                num(f, "decode_batch20_vs_single")?
            ));
            if let Some(tok_s) = f["prompts20_tok_s"].as_f64() {
                out.push_str(&format!(
                    "| 20 different prompts, one sample each, as a batch (aggregate) | **{tok_s:.1} tok/s** | |\n"
                ));
                out.push_str(&format!(
                    "| `decode_prompts20_vs_single` (goal ≥ 6×) | **{:.2}×** | |\n",
                    num(f, "decode_prompts20_vs_single")?
                ));
            }
            match f["decode_single_vs_llama_cpp"].as_f64() {
                Some(r) => out.push_str(&format!(
                    "| `decode_single_vs_llama_cpp` (goal ≥ 1.0×) | **{r:.2}×** (llama.cpp {:.1} tok/s) | |\n",
                    num(f, "llama_cpp_single_tok_s")?
                )),
                None => out.push_str(
                    "| `decode_single_vs_llama_cpp` (goal ≥ 1.0×) | not measured: `llama_cpp` was not importable | |\n",
                ),
            }
            // llama.cpp's own batches of the same file, where the results have them.
            for (what, ratio, peer) in [
                (
                    "20 samples of one prompt",
                    "decode_batch20_vs_llama_cpp",
                    "llama_cpp_batch20_tok_s",
                ),
                (
                    "20 different prompts",
                    "decode_prompts20_vs_llama_cpp",
                    "llama_cpp_prompts20_tok_s",
                ),
            ] {
                match (f.get(ratio), f[ratio].as_f64()) {
                    (None, _) => {}
                    (Some(_), Some(r)) => out.push_str(&format!(
                        "| {what} against llama.cpp's batch, `{ratio}` | **{r:.2}×** (llama.cpp {:.1} tok/s) | |\n",
                        num(f, peer)?
                    )),
                    (Some(_), None) => out.push_str(&format!(
                        "| {what} against llama.cpp's batch, `{ratio}` | not measured: `llama_cpp` was not importable | |\n"
                    )),
                }
            }
        }
        "dpo" => {
            out.push_str(&format!(
                "| DPO on SmolLM2-135M ({:.0} steps of {:.0} pairs timed, {:.0} tokens in all, the first step left out) | tokens/s |\n",
                num(f, "steps_timed")?,
                num(f, "batch")?,
                num(f, "tokens")?
            ));
            out.push_str("| --- | --- |\n");
            out.push_str(&format!(
                "| rtlab `train_dpo` | **{:.1}** |\n",
                num(f, "rtlab_tok_s")?
            ));
            match (f["trl_tok_s"].as_f64(), f["dpo_vs_trl"].as_f64()) {
                (Some(trl), Some(r)) => {
                    out.push_str(&format!("| TRL `DPOTrainer` | {trl:.1} |\n"));
                    out.push_str(&format!("| `dpo_vs_trl` (goal ≥ 1.1×) | **{r:.2}×** |\n"));
                }
                _ => out.push_str(
                    "| TRL `DPOTrainer` | not run: torch, transformers, peft, trl, datasets or gguf were not importable |\n",
                ),
            }
        }
        "gguf_adapter" => {
            let tokens = num(f, "tokens")?;
            out.push_str(&format!(
                "| decoding ({tokens:.0} new tokens) | with a LoRA adapter | the base model, same runs |\n"
            ));
            out.push_str("| --- | --- | --- |\n");
            out.push_str(&format!(
                "| one stream | {:.1} tok/s | {:.1} tok/s |\n",
                num(f, "adapter_single_tok_s")?,
                num(f, "base_single_tok_s")?
            ));
            out.push_str(&format!(
                "| 20 different prompts as one batch (aggregate) | **{:.1} tok/s** | {:.1} tok/s |\n",
                num(f, "adapter_prompts20_tok_s")?,
                num(f, "base_prompts20_tok_s")?
            ));
            out.push_str(&format!(
                "| batch / one stream | **{:.2}×** | {:.2}× |\n",
                num(f, "decode_prompts20_adapter_vs_single")?,
                num(f, "decode_prompts20_vs_single")?
            ));
        }
        "gguf_train" => {
            out.push_str(&format!(
                "| LoRA on SmolLM2-135M ({:.0} steps of {:.0} rows timed, {:.0} tokens in all, the first step left out) | tok/s | peak RSS |\n",
                num(f, "steps_timed")?,
                num(f, "batch")?,
                num(f, "tokens")?
            ));
            out.push_str("| --- | --- | --- |\n");
            for (key, what) in [
                ("lora_f32", "rtlab, f32 base, gradient checkpointing"),
                (
                    "lora_f32_whole_graph",
                    "rtlab, f32 base, whole graph kept (`\"auto\"`'s choice when it fits)",
                ),
                ("qlora", "rtlab, quantized base (QLoRA), checkpointing"),
                (
                    "qlora_whole_graph",
                    "rtlab, quantized base, whole graph kept",
                ),
                (
                    "peft_f32",
                    "PyTorch + PEFT, f32 base, gradient checkpointing",
                ),
                (
                    "peft_f32_whole_graph",
                    "PyTorch + PEFT, f32 base, whole graph kept",
                ),
            ] {
                match f[key].as_object() {
                    Some(_) => out.push_str(&format!(
                        "| {what} | {:.1} | {:.0} MiB |\n",
                        num(&f[key], "tok_s")?,
                        num(&f[key], "peak_rss_mb")?
                    )),
                    None => out.push_str(&format!("| {what} | not run | |\n")),
                }
            }
            for (key, what) in [
                (
                    "lora_vs_peft",
                    "`lora_vs_peft`, checkpointing on both sides (goal ≥ 1.1×)",
                ),
                (
                    "lora_vs_peft_whole_graph",
                    "the same, whole graph on both sides",
                ),
            ] {
                match f[key].as_f64() {
                    Some(r) => out.push_str(&format!("| {what} | **{r:.2}×** | |\n")),
                    None => out.push_str(&format!(
                        "| {what} | not measured: PyTorch + PEFT were not importable | |\n"
                    )),
                }
            }
        }
        "train" => {
            out.push_str(&format!(
                "| model (batch × tokens a step; {:.0} steps timed after a warm-up step) | device | rtlab train tok/s | rtlab forward tok/s | train / forward | rtlab peak RSS | PyTorch + PEFT tok/s | PEFT peak RSS | `lora_vs_peft` (goal ≥ 1.1×) |\n",
                num(f, "steps_timed")?
            ));
            out.push_str("| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
            for (key, what, device) in [
                ("tiny_cpu", "tiny (64 hidden, 2 layers)", "CPU"),
                ("tiny_wgpu", "the same", "wgpu on lavapipe"),
                ("qwen2_5_0_5b_cpu", "Qwen2.5-0.5B-shaped", "CPU"),
            ] {
                let row = &f[key];
                if !row.is_object() {
                    out.push_str(&format!("| {what} | {device} | not run | | | | | | |\n"));
                    continue;
                }
                let rate = |v: f64| group_thousands(v.round() as u64);
                let train = num(row, "rtlab_tok_s")?;
                let shape = format!(
                    "{what}, {:.0} × {:.0}",
                    num(row, "batch")?,
                    num(row, "seq")?
                );
                // The forward pass is `generate`'s prefill, which runs on the CPU whatever device
                // trained: it is no yardstick for a device's training step.
                let (forward, per_forward) = if device == "CPU" {
                    let forward = num(row, "rtlab_forward_tok_s")?;
                    (rate(forward), format!("{:.2}", train / forward))
                } else {
                    ("(CPU)".to_string(), String::new())
                };
                let (peft, peft_peak, ratio) = match (
                    row["peft_tok_s"].as_f64(),
                    row["peft_peak_rss_mb"].as_f64(),
                    row["lora_vs_peft"].as_f64(),
                ) {
                    (Some(p), Some(m), Some(r)) => {
                        (rate(p), format!("{m:.0} MiB"), format!("**{r:.2}×**"))
                    }
                    _ if device != "CPU" => (String::new(), String::new(), String::new()),
                    _ => (
                        "not run: torch, transformers or peft were not importable".to_string(),
                        String::new(),
                        String::new(),
                    ),
                };
                out.push_str(&format!(
                    "| {shape} | {device} | {} | {forward} | {per_forward} | {:.0} MiB | {peft} | {peft_peak} | {ratio} |\n",
                    rate(train),
                    num(row, "rtlab_peak_rss_mb")?
                ));
            }
        }
        other => {
            return Err(format!(
                "no table is defined for the bench {other:?}: add it to xtask's render()"
            ))
        }
    }
    let m = &results["machine"];
    let simd: Vec<&str> = m["simd"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let commit = results["commit"].as_str().unwrap_or("unknown");
    out.push_str(&format!(
        "\n`{command}`: medians of {} runs, on {} ({}), {} cores; {}.\n",
        results["runs"],
        m["cpu"].as_str().unwrap_or("an unknown CPU"),
        if simd.is_empty() {
            "no SIMD listed".to_string()
        } else {
            simd.join(", ")
        },
        m["cores"],
        match commit.strip_suffix("-dirty") {
            Some(c) => format!(
                "commit `{}` with uncommitted changes",
                &c[..c.len().min(12)]
            ),
            None => format!("commit `{}`", &commit[..commit.len().min(12)]),
        }
    ));
    Ok(out)
}

fn group_thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The bench names whose tables the chapter holds, in order.
pub fn tables_in(chapter: &str) -> Vec<String> {
    chapter
        .lines()
        .filter_map(|l| l.strip_prefix(OPEN))
        .filter_map(|rest| rest.strip_suffix(" -->"))
        .map(str::to_string)
        .collect()
}

/// The chapter with every bench table rendered from `results(name)`.
pub fn render_chapter(
    chapter: &str,
    results: impl Fn(&str) -> Result<Value, String>,
) -> Result<String, String> {
    let mut out = String::new();
    let mut lines = chapter.lines();
    while let Some(line) = lines.next() {
        out.push_str(line);
        out.push('\n');
        let Some(name) = line.strip_prefix(OPEN).and_then(|r| r.strip_suffix(" -->")) else {
            continue;
        };
        out.push_str(&render(name, &results(name)?)?);
        // Skip the old table up to its closing marker.
        loop {
            match lines.next() {
                Some(l) if l.trim() == CLOSE => {
                    out.push_str(CLOSE);
                    out.push('\n');
                    break;
                }
                Some(_) => {}
                None => return Err(format!("{CHAPTER}: the table {name:?} has no {CLOSE}")),
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_between_markers_is_replaced_and_the_rest_kept() {
        let results = serde_json::json!({
            "figures": {"kernel_start_ms": 50.0, "ipykernel_start_ms": 400.0,
                        "kernel_start_vs_ipykernel": 8.0, "kernel_execute_round_trip_ms": 0.1},
            "runs": 15, "machine": {"cpu": "Xeon", "simd": ["avx2"], "cores": 2}, "commit": "abc"
        });
        let chapter =
            "# Speed\n<!-- bench-table kernel -->\n| stale |\n<!-- /bench-table -->\nafter\n";
        let out = render_chapter(chapter, |_| Ok(results.clone())).unwrap();
        assert!(out.starts_with("# Speed\n<!-- bench-table kernel -->\n| what |"));
        assert!(out.contains("**50.0 ms** | 400.0 ms (8.0× slower)"));
        assert!(out.contains("on Xeon (avx2), 2 cores; commit `abc`"));
        assert!(out.ends_with("<!-- /bench-table -->\nafter\n"));
        assert!(!out.contains("stale"));
        assert_eq!(tables_in(chapter), ["kernel"]);
    }

    #[test]
    fn the_train_table_says_which_side_did_not_run_and_gives_wgpu_no_cpu_yardstick() {
        let shape = |peft: serde_json::Value| {
            serde_json::json!({
                "batch": 4, "seq": 256, "tokens": 17408, "rtlab_tok_s": 30000.0,
                "rtlab_forward_tok_s": 60000.0, "rtlab_peak_rss_mb": 89.0,
                "peft_tok_s": peft, "peft_peak_rss_mb": peft.as_f64().map(|_| 800.0),
                "lora_vs_peft": peft.as_f64().map(|p| 30000.0 / p),
            })
        };
        let results = serde_json::json!({
            "figures": {"steps_timed": 16, "tiny_cpu": shape(serde_json::json!(25000.0)),
                        "tiny_wgpu": shape(serde_json::Value::Null)},
            "runs": 3, "machine": {"cpu": "c", "simd": ["avx2"], "cores": 2}, "commit": "abc"
        });
        let table = render("train", &results).unwrap();
        assert!(
            table.contains("16 steps timed after a warm-up step"),
            "{table}"
        );
        assert!(
            table.contains("| tiny (64 hidden, 2 layers), 4 × 256 | CPU | 30,000 | 60,000 | 0.50 | 89 MiB | 25,000 | 800 MiB | **1.20×** |"),
            "{table}"
        );
        assert!(
            table.contains(
                "| the same, 4 × 256 | wgpu on lavapipe | 30,000 | (CPU) |  | 89 MiB |  |  |  |"
            ),
            "{table}"
        );
        assert!(
            table.contains("| Qwen2.5-0.5B-shaped | CPU | not run |"),
            "{table}"
        );
        let mut no_peft = results.clone();
        no_peft["figures"]["tiny_cpu"] = shape(serde_json::Value::Null);
        let table = render("train", &no_peft).unwrap();
        assert!(
            table.contains("| 89 MiB | not run: torch, transformers or peft were not importable |"),
            "{table}"
        );
    }

    #[test]
    fn a_run_from_uncommitted_changes_says_so_under_its_table() {
        let results = |commit: &str| {
            serde_json::json!({
                "figures": {"kernel_start_ms": 1.0, "ipykernel_start_ms": 2.0,
                            "kernel_start_vs_ipykernel": 2.0, "kernel_execute_round_trip_ms": 0.5},
                "runs": 3, "machine": {"cpu": "c", "simd": ["avx2"], "cores": 2},
                "commit": commit,
            })
        };
        let clean = render("kernel", &results("0123456789abcdef")).unwrap();
        assert!(clean.contains("commit `0123456789ab`."), "{clean}");
        let dirty = render("kernel", &results("0123456789abcdef-dirty")).unwrap();
        assert!(
            dirty.contains("commit `0123456789ab` with uncommitted changes."),
            "{dirty}"
        );
    }

    #[test]
    fn the_verify_table_states_how_the_machine_scales_cpu_bound_work_when_it_was_measured() {
        let workload = serde_json::json!({
            "rows": 10, "sequential_s": 4.0, "parallel_s": 2.5, "sequential_1gib_s": 4.0,
            "parallel_1gib_s": 2.5, "sequential_sys_s": 1.0, "parallel_sys_s": 1.0,
            "sequential_1gib_sys_s": 1.0, "parallel_1gib_sys_s": 1.0, "cached_s": 0.1
        });
        let results = |scaling: serde_json::Value| {
            serde_json::json!({
                "figures": {"verilog_eval": workload, "dataset_rows": null, "machine_scaling": scaling},
                "runs": 3, "machine": {"cpu": "c", "simd": ["avx2"], "cores": 2}, "commit": "abc"
            })
        };
        let scaling = serde_json::json!({"alone_s": 4.0, "together_s": 4.4, "processes": 2, "per_core": 4.0 / 4.4});
        let with = render("verify", &results(scaling)).unwrap();
        assert!(with.contains("| 1.60× = 0.80 × cores |"), "{with}");
        assert!(
            with.contains("alone took 4.00 s, 2 copies at once 4.40 s to the last, so its cores gave purely CPU-bound work **0.91 × cores**"),
            "{with}"
        );
        let without = render("verify", &results(serde_json::Value::Null)).unwrap();
        assert!(!without.contains("The machine itself"), "{without}");
    }

    #[test]
    fn the_decode_table_shows_the_small_pages_run_where_it_was_measured() {
        let results = |small: Option<f64>| {
            let mut figures = serde_json::json!({
                "tokens": 128, "single_tok_s": 80.0, "single_candle_tok_s": 60.0,
                "single_f32_tok_s": 30.0, "batch20_tok_s": 300.0, "batch20_candle_tok_s": 100.0,
                "decode_batch20_vs_single": 3.75, "decode_single_vs_llama_cpp": 0.9,
                "llama_cpp_single_tok_s": 88.9
            });
            if let Some(small) = small {
                figures["single_small_pages_tok_s"] = small.into();
            }
            serde_json::json!({
                "figures": figures, "runs": 3,
                "machine": {"cpu": "c", "simd": ["avx2"], "cores": 2}, "commit": "abc"
            })
        };
        let with = render("gguf_decode", &results(Some(74.5))).unwrap();
        assert!(
            with.contains("| one stream, Q4_1, the weights on 4 KiB pages (`RTLAB_HUGE_PAGES=off`) | 74.5 tok/s | |"),
            "{with}"
        );
        let without = render("gguf_decode", &results(None)).unwrap();
        assert!(!without.contains("4 KiB pages"), "{without}");
    }

    #[test]
    fn the_decode_table_sets_rtlabs_batches_beside_llama_cpps_where_they_ran() {
        let results = |llama: serde_json::Value| {
            let mut figures = serde_json::json!({
                "tokens": 128, "single_tok_s": 80.0, "single_candle_tok_s": 60.0,
                "single_f32_tok_s": 30.0, "batch20_tok_s": 300.0, "batch20_candle_tok_s": 100.0,
                "decode_batch20_vs_single": 3.75, "decode_single_vs_llama_cpp": null,
                "prompts20_tok_s": 200.0, "decode_prompts20_vs_single": 2.5
            });
            for (key, value) in llama.as_object().unwrap() {
                figures[key] = value.clone();
            }
            serde_json::json!({
                "figures": figures, "runs": 3,
                "machine": {"cpu": "c", "simd": ["avx2"], "cores": 2}, "commit": "abc"
            })
        };
        let ran = render(
            "gguf_decode",
            &results(serde_json::json!({
                "llama_cpp_batch20_tok_s": 150.0, "decode_batch20_vs_llama_cpp": 2.0,
                "llama_cpp_prompts20_tok_s": 125.0, "decode_prompts20_vs_llama_cpp": 1.6
            })),
        )
        .unwrap();
        assert!(
            ran.contains("| 20 samples of one prompt against llama.cpp's batch, `decode_batch20_vs_llama_cpp` | **2.00×** (llama.cpp 150.0 tok/s) | |"),
            "{ran}"
        );
        assert!(ran.contains("**1.60×** (llama.cpp 125.0 tok/s)"), "{ran}");
        let not_run = render(
            "gguf_decode",
            &results(serde_json::json!({
                "llama_cpp_batch20_tok_s": null, "decode_batch20_vs_llama_cpp": null,
                "llama_cpp_prompts20_tok_s": null, "decode_prompts20_vs_llama_cpp": null
            })),
        )
        .unwrap();
        assert_eq!(
            not_run.matches("against llama.cpp's batch").count(),
            2,
            "{not_run}"
        );
        assert!(not_run.contains("not measured"), "{not_run}");
        // Results from before the peer was measured render as they did.
        let older = render("gguf_decode", &results(serde_json::json!({}))).unwrap();
        assert!(!older.contains("llama.cpp's batch"), "{older}");
    }

    #[test]
    fn a_missing_figure_or_marker_is_an_error_that_says_what_to_do() {
        let empty = serde_json::json!({"figures": {}});
        let e = render("kernel", &empty).unwrap_err();
        assert!(
            e.contains("figures.kernel_start_ms") && e.contains("cargo bench --bench kernel"),
            "{e}"
        );
        let e = render_chapter(
            "<!-- bench-table kernel -->\n| x |\n",
            |_| Ok(empty.clone()),
        )
        .unwrap_err();
        assert!(e.contains("figures.kernel_start_ms"), "{e}");
        assert!(render("nope", &empty)
            .unwrap_err()
            .contains("no table is defined"));
    }
}
