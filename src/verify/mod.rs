//! The Verilog verifier: scores an example by syntax (iverilog), synthesis and I/O use (a light Yosys
//! pass read as a netlist), lint (Verilator -Wall) and functional simulation (iverilog/vvp against a
//! VerilogEval, A7 or RTLLM testbench, or a differential testbench built from a reference module).
//!
//! Main types: [`VerifyOptions`], [`Report`]. Untrusted code is screened ([`sandbox`]) and every tool
//! runs in a private scratch directory under rlimits ([`process`]). Batches run on every core and are
//! cached in the workspace store ([`batch`]).

mod api;
pub mod batch;
mod difftb;
pub mod mutate;
pub mod process;
mod sandbox;
mod stages;
mod yosys;

pub use api::register;
pub use stages::verify;

use rhai::{Array, Dynamic, Map};
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// Score weights; a component that did not run (no simulation, say) drops out and the rest renormalize.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Weights {
    pub syntax: f64,
    pub synth: f64,
    pub io: f64,
    pub lint: f64,
    pub functional: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            syntax: 0.2,
            synth: 0.2,
            io: 0.2,
            lint: 0.1,
            functional: 0.3,
        }
    }
}

/// What to verify against and how.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VerifyOptions {
    pub top: Option<String>,
    pub testbench: Option<String>,
    pub reference: Option<String>,
    pub spec: Option<String>,
    /// Simulation timeout.
    pub timeout_ms: u64,
    /// Timeout of the full `synth` stage, when asked for.
    pub synth_timeout_ms: u64,
    /// Stages to run: syntax, synth, lint, sim (the default set), and synth_full and equiv on request.
    pub stages: Vec<String>,
    pub weights: Weights,
    /// Random cycles of a differential testbench.
    pub diff_cycles: usize,
    pub seed: u32,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            top: None,
            testbench: None,
            reference: None,
            spec: None,
            timeout_ms: 30_000,
            synth_timeout_ms: 60_000,
            stages: ["syntax", "synth", "lint", "sim"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            weights: Weights::default(),
            diff_cycles: 2000,
            seed: 1,
        }
    }
}

impl VerifyOptions {
    pub fn wants(&self, stage: &str) -> bool {
        self.stages.iter().any(|s| s == stage)
    }

    /// From a Rhai options map; unknown keys are an error naming them.
    pub fn from_map(map: &Map) -> Result<VerifyOptions, String> {
        let mut o = VerifyOptions::default();
        let text = |v: &Dynamic| {
            if v.is_unit() {
                None
            } else {
                Some(v.to_string())
            }
        };
        for (k, v) in map.iter() {
            match k.as_str() {
                "top" => o.top = text(v),
                "testbench" => o.testbench = text(v),
                "reference" => o.reference = text(v),
                "spec" => o.spec = text(v),
                "timeout_ms" => o.timeout_ms = v.as_int().map_err(|_| "verify: timeout_ms must be an int")?.max(1) as u64,
                "synth_timeout_ms" => o.synth_timeout_ms = v.as_int().map_err(|_| "verify: synth_timeout_ms must be an int")?.max(1) as u64,
                "diff_cycles" => o.diff_cycles = v.as_int().map_err(|_| "verify: diff_cycles must be an int")?.max(1) as usize,
                "seed" => o.seed = v.as_int().map_err(|_| "verify: seed must be an int")? as u32,
                "stages" => {
                    let arr = v.read_lock::<Array>().ok_or("verify: stages must be an array like [\"syntax\", \"sim\"]")?;
                    o.stages = arr.iter().map(|s| s.to_string()).collect();
                    for s in &o.stages {
                        if !["syntax", "synth", "lint", "sim", "synth_full", "equiv"].contains(&s.as_str()) {
                            return Err(format!("verify: unknown stage {s:?}; stages are syntax, synth, lint, sim, synth_full, equiv"));
                        }
                    }
                }
                "weights" => {
                    let w = v.read_lock::<Map>().ok_or("verify: weights must be a map like #{functional: 0.5}")?;
                    for (name, value) in w.iter() {
                        let x = value.as_float().or_else(|_| value.as_int().map(|i| i as f64)).map_err(|_| format!("verify: weight {name} must be a number"))?;
                        match name.as_str() {
                            "syntax" => o.weights.syntax = x,
                            "synth" => o.weights.synth = x,
                            "io" => o.weights.io = x,
                            "lint" => o.weights.lint = x,
                            "functional" => o.weights.functional = x,
                            other => return Err(format!("verify: unknown weight {other:?}; weights are syntax, synth, io, lint, functional")),
                        }
                    }
                }
                // Batch-only keys are checked by the batch API.
                "code" => {}
                other => return Err(format!("verify: unknown option {other:?}; options are top, testbench, reference, spec, timeout_ms, synth_timeout_ms, stages, weights, diff_cycles, seed")),
            }
        }
        Ok(o)
    }
}

/// The verdict on one example.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub syntax_ok: bool,
    pub synth_ok: Option<bool>,
    pub all_io_used: Option<bool>,
    pub unused_inputs: Vec<String>,
    pub undriven_outputs: Vec<String>,
    pub lint: Vec<String>,
    /// pass, mismatch, compile_err, timeout, error or skipped.
    pub sim_status: String,
    pub mismatches: Option<i64>,
    pub samples: Option<i64>,
    pub functional: Option<bool>,
    /// VerilogEval's failure class of a failed simulation (S, C, m, p, c, e, n, T, or mismatch).
    pub failure_class: Option<String>,
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    pub score: f64,
    pub stage_ms: BTreeMap<String, f64>,
    pub tools: BTreeMap<String, String>,
    /// Stages that did not run, with why (a missing tool and its install command, say).
    pub skipped: BTreeMap<String, String>,
    /// Formal equivalence with the reference (the `equiv` stage): "equivalent", "different" or
    /// "unknown" (the induction did not close), or None when not run.
    pub equiv: Option<String>,
    /// The log of the simulation (capped), for reading why it failed.
    pub sim_log: String,
}

impl Report {
    pub fn to_map(&self) -> Map {
        let v = serde_json::to_value(self).unwrap_or_default();
        crate::data::json_to_dynamic(v)
            .try_cast::<Map>()
            .unwrap_or_default()
    }
}

/// An external tool and how to install it.
pub struct Tool {
    pub program: &'static str,
    pub version_args: &'static [&'static str],
    pub install: &'static str,
}

pub const IVERILOG: Tool = Tool {
    program: "iverilog",
    version_args: &["-V"],
    install: "apt-get install -y iverilog",
};
pub const VVP: Tool = Tool {
    program: "vvp",
    version_args: &["-V"],
    install: "apt-get install -y iverilog",
};
pub const YOSYS: Tool = Tool {
    program: "yosys",
    version_args: &["-V"],
    install: "apt-get install -y yosys",
};
pub const VERILATOR: Tool = Tool {
    program: "verilator",
    version_args: &["--version"],
    install: "apt-get install -y verilator",
};

/// Tool versions, probed once per process; a missing tool maps to None.
pub fn tool_versions() -> &'static BTreeMap<&'static str, Option<String>> {
    static VERSIONS: OnceLock<BTreeMap<&'static str, Option<String>>> = OnceLock::new();
    VERSIONS.get_or_init(|| {
        [IVERILOG, VVP, YOSYS, VERILATOR]
            .iter()
            .map(|t| {
                let v = process::tool_version(t.program, t.version_args)
                    .map(|line| line.split(" (").next().unwrap_or(&line).to_string());
                (t.program, v)
            })
            .collect()
    })
}
