//! The Verilog verifier: scores an example by syntax (iverilog), synthesis and I/O use (a light Yosys
//! pass read as a netlist), lint (Verilator -Wall) and functional simulation (iverilog/vvp against a
//! VerilogEval, A7 or RTLLM testbench, or a differential testbench built from a reference module).
//!
//! Main types: [`VerifyOptions`], [`Report`]. Untrusted code is screened ([`sandbox`]) and every tool
//! runs in a private scratch directory under rlimits ([`process`]). Batches run on every core and are
//! cached in the workspace store ([`batch`]).

/// The identity of this crate's code (the hash of its sources and `Cargo.lock`): every result the
/// verifier caches is keyed on it, so a changed build never serves an old answer.
pub fn code_identity() -> String {
    rtlab_core::provenance::code_identity("verifier", env!("RTLAB_CODE_IDENTITY"))
}

mod api;
pub mod batch;
mod difftb;
mod equiv_proof;
mod error;
pub mod mutate;
pub mod process;
pub mod sandbox;
pub mod scratch;
pub mod stages;
mod verilator_build;
mod verilator_ports;
mod yosys;

pub use api::{verify_rows, FrameInputs};
pub use error::{Refusal, VerifyError};
pub use stages::verify;

use rtlab_core::OptionError;
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// Score weights. The score is the weighted mean over the stages that ran (`Report::stages`): a stage
/// that was not chosen (or `sim` without a testbench or reference) is left out and the rest renormalize.
/// A chosen stage whose tool is missing is an error before any work, never left out.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
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

/// Per-stage time limits in milliseconds (`timeouts: #{syntax, synth, lint, sim, synth_full}`).
/// A stage that runs past its limit fails: it scores 0 and says so in `errors`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Timeouts {
    pub syntax: u64,
    pub synth: u64,
    pub lint: u64,
    /// Compiling and running the testbench.
    pub sim: u64,
    /// The full `synth` stage and the `equiv` proof, when asked for: some designs take many seconds.
    pub synth_full: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            syntax: 30_000,
            synth: 30_000,
            lint: 30_000,
            sim: 30_000,
            synth_full: 60_000,
        }
    }
}

/// Which simulator runs testbenches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Simulator {
    Iverilog,
    Verilator,
    /// iverilog, and Verilator where iverilog says a construct is not supported ("sorry:").
    Auto,
}

impl std::fmt::Display for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Simulator::Iverilog => "iverilog",
            Simulator::Verilator => "verilator",
            Simulator::Auto => "auto",
        })
    }
}

/// A stage of the verifier. Scripts and reports name it (`"synth_full"`): the name is its serde form,
/// so stored reports and cache keys read the same as when stages were strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// iverilog compiles the design.
    Syntax,
    /// The light Yosys pass: synthesizable, and which inputs and outputs are used.
    Synth,
    /// `verilator --lint-only -Wall`.
    Lint,
    /// Simulation against a testbench, or a differential one against a reference.
    Sim,
    /// Yosys' full `synth`, on request.
    SynthFull,
    /// Formal equivalence against a reference, on request.
    Equiv,
}

impl Stage {
    /// Every stage, in the order the verifier runs them.
    pub const ALL: [Stage; 6] = [
        Stage::Syntax,
        Stage::Synth,
        Stage::Lint,
        Stage::Sim,
        Stage::SynthFull,
        Stage::Equiv,
    ];

    /// The stages run when no `stages` option is given (`sim` only where there is a testbench or a
    /// reference to run against).
    pub const DEFAULT: [Stage; 4] = [Stage::Syntax, Stage::Synth, Stage::Lint, Stage::Sim];

    /// The name scripts write and reports show.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Syntax => "syntax",
            Stage::Synth => "synth",
            Stage::Lint => "lint",
            Stage::Sim => "sim",
            Stage::SynthFull => "synth_full",
            Stage::Equiv => "equiv",
        }
    }

    /// The stage named `name`, if there is one.
    pub fn parse(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Ordered by name, so maps keyed by stage (`skipped`, `stage_ms`) list them as they always have.
impl Ord for Stage {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.name().cmp(other.name())
    }
}

impl PartialOrd for Stage {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// What to verify against and how.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct VerifyOptions {
    pub top: Option<String>,
    pub testbench: Option<String>,
    pub reference: Option<String>,
    pub spec: Option<String>,
    pub timeouts: Timeouts,
    pub simulator: Simulator,
    /// Stages to run: syntax, synth, lint, sim (the default set), and synth_full and equiv on request.
    pub stages: Vec<Stage>,
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
            timeouts: Timeouts::default(),
            simulator: Simulator::Auto,
            stages: Stage::DEFAULT.to_vec(),
            weights: Weights::default(),
            diff_cycles: 2000,
            seed: 1,
        }
    }
}

/// The options `verify` takes (`df.verify` adds `code`).
pub const VERIFY_KEYS: &[&str] = &[
    "top",
    "testbench",
    "reference",
    "spec",
    "timeout_ms",
    "synth_timeout_ms",
    "timeouts",
    "simulator",
    "stages",
    "weights",
    "diff_cycles",
    "seed",
];

impl VerifyOptions {
    pub fn wants(&self, stage: Stage) -> bool {
        self.stages.contains(&stage)
    }

    /// `timeout_ms`, `synth_timeout_ms` and the per-stage `timeouts` map, in milliseconds.
    fn read_timeouts(&mut self, opts: &rtlab_core::Options) -> Result<(), OptionError> {
        let ms = |key: &str| -> Result<Option<u64>, OptionError> {
            Ok(opts.int_at_least(key, 1)?.map(|v| v as u64))
        };
        if let Some(t) = ms("timeout_ms")? {
            self.timeouts.sim = t;
        }
        if let Some(t) = ms("synth_timeout_ms")? {
            self.timeouts.synth_full = t;
        }
        for (stage, t) in opts.numbers(
            "timeouts",
            &["syntax", "synth", "lint", "sim", "synth_full"],
        )? {
            if t < 1.0 || t.fract() != 0.0 {
                return Err(opts.rule(format!(
                    "`timeouts.{stage}` must be a whole number of milliseconds of at least 1, not {t}"
                )));
            }
            let slot = match stage.as_str() {
                "syntax" => &mut self.timeouts.syntax,
                "synth" => &mut self.timeouts.synth,
                "lint" => &mut self.timeouts.lint,
                "sim" => &mut self.timeouts.sim,
                _ => &mut self.timeouts.synth_full,
            };
            *slot = t as u64;
        }
        Ok(())
    }

    /// `simulator`, `diff_cycles` and `seed` (of the differential testbench).
    fn read_simulation(&mut self, opts: &rtlab_core::Options) -> Result<(), OptionError> {
        if let Some(sim) = opts.string("simulator")? {
            self.simulator = match sim.as_str() {
                "iverilog" => Simulator::Iverilog,
                "verilator" => Simulator::Verilator,
                "auto" => Simulator::Auto,
                other => {
                    return Err(opts.rule(format!(
                        "simulator {other:?}: use \"iverilog\", \"verilator\" or \"auto\""
                    )))
                }
            };
        }
        if let Some(n) = opts.int_at_least("diff_cycles", 1)? {
            self.diff_cycles = n as usize;
        }
        if let Some(seed) = opts.int("seed")? {
            self.seed = u32::try_from(seed).map_err(|_| {
                opts.rule(format!(
                    "option `seed` must be between 0 and {}, not {seed}",
                    u32::MAX
                ))
            })?;
        }
        Ok(())
    }

    /// `stages`: known names only, and always `syntax`.
    fn read_stages(&mut self, opts: &rtlab_core::Options) -> Result<(), OptionError> {
        if let Some(names) = opts.strings("stages")? {
            let mut stages = Vec::new();
            for s in &names {
                let Some(stage) = Stage::parse(s) else {
                    let all: Vec<&str> = Stage::ALL.iter().map(|s| s.name()).collect();
                    return Err(opts.rule(format!(
                        "unknown stage {s:?}; stages are {}",
                        all.join(", ")
                    )));
                };
                stages.push(stage);
            }
            if !stages.contains(&Stage::Syntax) {
                return Err(opts.rule(
                    "`stages` must include \"syntax\": every other stage needs a design that compiles",
                ));
            }
            self.stages = stages;
        }
        Ok(())
    }

    /// `weights` of the score, each at least 0.
    fn read_weights(&mut self, opts: &rtlab_core::Options) -> Result<(), OptionError> {
        for (name, x) in
            opts.numbers("weights", &["syntax", "synth", "io", "lint", "functional"])?
        {
            if x < 0.0 || !x.is_finite() {
                return Err(opts.rule(format!(
                    "`weights.{name}` must be a number of at least 0, not {x}"
                )));
            }
            match name.as_str() {
                "syntax" => self.weights.syntax = x,
                "synth" => self.weights.synth = x,
                "io" => self.weights.io = x,
                "lint" => self.weights.lint = x,
                _ => self.weights.functional = x,
            }
        }
        Ok(())
    }

    /// The tools the chosen stages need, with the stage that needs each. `simulates`: some example has
    /// a testbench or a reference, so `sim` runs (and a differential testbench needs Yosys for ports).
    fn needed_tools(&self, simulates: bool) -> Vec<(&'static Tool, Stage)> {
        let mut out = Vec::new();
        if self.wants(Stage::Syntax) {
            out.push((&IVERILOG, Stage::Syntax));
        }
        if self.wants(Stage::Synth) {
            out.push((&YOSYS, Stage::Synth));
        }
        if self.wants(Stage::Lint) {
            out.push((&VERILATOR, Stage::Lint));
        }
        if self.wants(Stage::Sim) && simulates {
            if self.simulator == Simulator::Verilator {
                out.push((&VERILATOR, Stage::Sim));
            } else {
                out.push((&IVERILOG, Stage::Sim));
                out.push((&VVP, Stage::Sim));
            }
            if self.testbench.is_none() && self.reference.is_some() {
                out.push((&YOSYS, Stage::Sim));
            }
        }
        if self.wants(Stage::SynthFull) {
            out.push((&YOSYS, Stage::SynthFull));
        }
        if self.wants(Stage::Equiv) {
            out.push((&YOSYS, Stage::Equiv));
        }
        out
    }

    /// Refuses to start when a chosen stage's tool is missing: a stage that cannot run is never dropped
    /// from the score in silence. The error names the tool, the install command and the way to
    /// leave the stage out on purpose.
    pub fn check_tools(&self, simulates: bool) -> Result<(), VerifyError> {
        scratch::check_root()?;
        let mut missing: Vec<(&Tool, Stage)> = Vec::new();
        for (tool, stage) in self.needed_tools(simulates) {
            if tool_versions()
                .get(tool.program)
                .cloned()
                .flatten()
                .is_none()
                && !missing.iter().any(|(t, _)| t.program == tool.program)
            {
                missing.push((tool, stage));
            }
        }
        let Some((tool, stage)) = missing.first() else {
            return Ok(());
        };
        let without: Vec<&str> = self
            .stages
            .iter()
            .filter(|s| !missing.iter().any(|(_, m)| m == *s))
            .map(|s| s.name())
            .collect();
        Err(VerifyError::ToolMissing {
            stage: stage.to_string(),
            program: tool.program.to_string(),
            install: tool.install.to_string(),
            without: without.iter().map(|s| s.to_string()).collect(),
        })
    }
}

/// True for a plain Verilog identifier: what a `top` may be, since it is passed to the tools as an
/// argument (a flag smuggled in it would load a VPI module, say).
pub fn is_module_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
}

/// The verdict of the `equiv` stage. Scripts and stored reports see it as a string
/// (`"equivalent"`, `"different"`, `"unknown"`), the names serde writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Equivalence {
    /// The induction closed: no input sequence makes the outputs differ.
    Equivalent,
    /// The base case failed: Yosys found an input sequence on which the outputs differ.
    Different,
    /// Nothing proven: the induction did not close within its steps, the proof ran past its
    /// limit, or the miter could not be built.
    Unknown,
}

/// How the simulation of an example ended. Scripts and stored reports see it as a string (`"pass"`,
/// `"mismatch"`, `"compile_err"`, `"timeout"`, `"error"`, `"skipped"`), the names serde writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SimStatus {
    /// The testbench ran and passed.
    Pass,
    /// The testbench ran and found wrong outputs.
    Mismatch,
    /// The design and the testbench do not compile together.
    CompileErr,
    /// The simulation ran past its time limit.
    Timeout,
    /// The simulator could not be run, or ended without a verdict.
    Error,
    /// No simulation ran (no testbench, or the stage was not asked for).
    #[default]
    Skipped,
}

impl SimStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SimStatus::Pass => "pass",
            SimStatus::Mismatch => "mismatch",
            SimStatus::CompileErr => "compile_err",
            SimStatus::Timeout => "timeout",
            SimStatus::Error => "error",
            SimStatus::Skipped => "skipped",
        }
    }
}

impl std::fmt::Display for SimStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// VerilogEval's classes of a failed example, by the letters its analysis uses (what scripts and
/// stored reports see), plus `mismatch` for a design that runs and gives wrong outputs.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum FailureClass {
    /// `S`: a syntax error.
    #[serde(rename = "S")]
    Syntax,
    /// `C`: another compile error.
    #[serde(rename = "C")]
    Compile,
    /// `m`: an unknown module type.
    #[serde(rename = "m")]
    UnknownModule,
    /// `p`: a port the testbench binds does not exist.
    #[serde(rename = "p")]
    PortBinding,
    /// `c`: the clock port does not bind.
    #[serde(rename = "c")]
    ClockBinding,
    /// `e`: a cast the compiler rejects.
    #[serde(rename = "e")]
    Cast,
    /// `n`: a bad numeric constant.
    #[serde(rename = "n")]
    NumericConstant,
    /// `T`: the simulation timed out.
    #[serde(rename = "T")]
    Timeout,
    /// The design runs and gives wrong outputs.
    #[serde(rename = "mismatch")]
    Mismatch,
}

impl FailureClass {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Syntax => "S",
            FailureClass::Compile => "C",
            FailureClass::UnknownModule => "m",
            FailureClass::PortBinding => "p",
            FailureClass::ClockBinding => "c",
            FailureClass::Cast => "e",
            FailureClass::NumericConstant => "n",
            FailureClass::Timeout => "T",
            FailureClass::Mismatch => "mismatch",
        }
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
    pub sim_status: SimStatus,
    pub mismatches: Option<i64>,
    pub samples: Option<i64>,
    pub functional: Option<bool>,
    /// VerilogEval's failure class of a failed simulation.
    pub failure_class: Option<FailureClass>,
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    /// The weighted mean over exactly the stages in `stages` (see [`Weights`]).
    pub score: f64,
    /// The stages that ran, in order; the score's weights cover exactly these.
    pub stages: Vec<Stage>,
    /// Stages that ran past their timeout (they score 0).
    pub timed_out: Vec<Stage>,
    pub stage_ms: BTreeMap<Stage, f64>,
    pub tools: BTreeMap<String, String>,
    /// Stages that did not run, with why (a missing tool and its install command, say).
    pub skipped: BTreeMap<Stage, String>,
    /// Formal equivalence with the reference (the `equiv` stage), or None when not run.
    pub equiv: Option<Equivalence>,
    /// The log of the simulation (capped), for reading why it failed.
    pub sim_log: String,
    /// The simulator that ran the testbench (never `Auto`), or None when none ran.
    pub simulator: Option<Simulator>,
    /// A tool was killed by a signal (out of memory, a CPU limit): like a timeout, this verdict may
    /// not be what a quieter machine gives, so the store keeps it as provisional.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub killed: bool,
}

impl Report {
    /// A verdict the machine's load may have decided (a stage timed out, a tool was killed), not the
    /// design: stored as provisional and verified again on the next run.
    pub fn is_transient(&self) -> bool {
        !self.timed_out.is_empty() || self.killed
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

rhai::def_package! {
    /// The Verilog verifier: `verify`, `df.verify`, `rename_module` and the mutation tools.
    pub VerifyPackage(module) {
        api::register(module);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_serialize_as_the_names_scripts_write_so_stored_verdicts_keep_their_keys() {
        // The verifier's cache key hashes the options' JSON, and the store keeps reports as JSON:
        // a stage must serialize exactly as the string it replaced.
        assert_eq!(
            serde_json::to_string(&VerifyOptions::default().stages).unwrap(),
            r#"["syntax","synth","lint","sim"]"#
        );
        for stage in Stage::ALL {
            assert_eq!(
                serde_json::to_string(&stage).unwrap(),
                format!("\"{}\"", stage.name())
            );
            assert_eq!(Stage::parse(stage.name()), Some(stage));
        }
        assert_eq!(Stage::parse("simulate"), None);
    }

    #[test]
    fn maps_keyed_by_stage_list_them_by_name() {
        let mut skipped = BTreeMap::new();
        skipped.insert(Stage::Synth, "a");
        skipped.insert(Stage::Equiv, "b");
        skipped.insert(Stage::Lint, "c");
        let order: Vec<&str> = skipped.keys().map(|s| s.name()).collect();
        assert_eq!(order, ["equiv", "lint", "synth"]);
    }
}
