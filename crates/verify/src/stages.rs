//! The verifier's stages, run in order in one scratch directory: syntax (iverilog), the light Yosys
//! pass (synthesizability, ports, I/O use), lint (Verilator), optional full synthesis, simulation.

use super::process::{lines_matching, run_tool, verilator_command, Ended, Limits, Outcome};
use super::{
    difftb, sandbox, tool_versions, verilator_ports, yosys, Equivalence, FailureClass, Report,
    SimStatus, Simulator, Stage, Tool, VerifyOptions, IVERILOG, VERILATOR, VVP, YOSYS,
};
use crate::equiv_proof;
use crate::verilator_build;
use crate::VerifyError;
use std::path::Path;
use std::time::Duration;

/// Lint codes already counted by the I/O check, or about file layout: not lint penalties.
const LINT_NOT_PENALIZED: &[&str] = &[
    "UNUSEDSIGNAL",
    "UNDRIVEN",
    "DECLFILENAME",
    "UNUSEDPARAM",
    "EOFNEWLINE",
];

fn available(tool: &Tool, report: &mut Report, stage: Stage) -> bool {
    match tool_versions().get(tool.program).cloned().flatten() {
        Some(v) => {
            report.tools.insert(tool.program.to_string(), v);
            true
        }
        None => {
            // The caller's `check_tools` refuses this up front; if a tool vanishes mid-batch the stage
            // fails (it scores 0), it is not dropped from the score.
            let why = format!(
                "{} is not installed; install: sudo {}",
                tool.program, tool.install
            );
            report.errors.push(format!("{stage}: {why}"));
            report.skipped.insert(stage, why);
            false
        }
    }
}

fn ms(o: &Outcome) -> f64 {
    (o.elapsed.as_secs_f64() * 1e4).round() / 10.0
}

/// Renames `module NAME` (the declaration only) to `module NEW`.
pub fn rename_module(code: &str, name: &str, new: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(i) = rest.find("module") {
        let before_ok = i == 0
            || !rest.as_bytes()[i - 1].is_ascii_alphanumeric() && rest.as_bytes()[i - 1] != b'_';
        let after = &rest[i + 6..];
        let trimmed = after.trim_start();
        if before_ok
            && after.starts_with(char::is_whitespace)
            && trimmed.starts_with(name)
            && !trimmed[name.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '_')
        {
            out.push_str(&rest[..i]);
            out.push_str("module ");
            out.push_str(new);
            rest = &trimmed[name.len()..];
        } else {
            out.push_str(&rest[..i + 6]);
            rest = &rest[i + 6..];
        }
    }
    out.push_str(rest);
    out
}

/// The names of the modules `code` declares, in order (comments and strings are not looked at).
pub fn declared_modules(code: &str) -> Vec<String> {
    let text = identifiers(code);
    let mut names = Vec::new();
    let mut words = text.iter();
    while let Some(w) = words.next() {
        if w == "module" || w == "macromodule" {
            if let Some(name) = words.next() {
                names.push(name.clone());
            }
        }
    }
    names
}

/// The identifier tokens of `code`, skipping comments, strings and escaped identifiers.
fn identifiers(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    scan_identifiers(code, |start, end| out.push(code[start..end].to_string()));
    out
}

/// The design as Yosys should read it: the keywords `always_comb`/`always_latch` as `always @*`.
///
/// Only whole keyword tokens in code change: an identifier that contains the word
/// (`out_always_comb`), an escaped identifier, a comment or a string stays as written.
pub fn yosys_friendly(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut copied = 0;
    scan_identifiers(code, |start, end| {
        if matches!(&code[start..end], "always_comb" | "always_latch") {
            out.push_str(&code[copied..start]);
            out.push_str("always @*");
            copied = end;
        }
    });
    out.push_str(&code[copied..]);
    out
}

/// Calls `found(start, end)` for each identifier or keyword in code, in order: comments, strings and
/// escaped identifiers are skipped, so a word inside them is never taken for code.
pub fn scan_identifiers(code: &str, mut found: impl FnMut(usize, usize)) {
    let bytes = code.as_bytes();
    let mut i = 0;
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'$';
    while i < bytes.len() {
        let rest = &bytes[i..];
        if rest.starts_with(b"//") {
            i += rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        } else if rest.starts_with(b"/*") {
            i += rest[2..]
                .windows(2)
                .position(|w| w == b"*/")
                .map_or(rest.len(), |p| p + 4);
        } else if rest[0] == b'"' {
            let mut j = 1;
            while j < rest.len() && rest[j] != b'"' && rest[j] != b'\n' {
                j += if rest[j] == b'\\' { 2 } else { 1 };
            }
            i += (j + 1).min(rest.len());
        } else if rest[0] == b'\\' {
            // An escaped identifier runs to the next white space.
            i += rest
                .iter()
                .position(|b| b.is_ascii_whitespace())
                .unwrap_or(rest.len());
        } else if is_ident(rest[0]) {
            let len = rest
                .iter()
                .position(|&b| !is_ident(b))
                .unwrap_or(rest.len());
            // A number (`8'd0`, `1`) is not an identifier.
            if !rest[0].is_ascii_digit() && rest[0] != b'$' {
                found(i, i + len);
            }
            i += len;
        } else {
            i += 1;
        }
    }
}

/// VerilogEval's failure class of a compile error, from the compiler's log.
fn compile_failure_class(log: &str) -> FailureClass {
    let l = log.to_lowercase();
    if l.contains("syntax error") {
        FailureClass::Syntax
    } else if l.contains("unknown module type") {
        FailureClass::UnknownModule
    } else if l.contains("unable to bind") && (l.contains("`clk'") || l.contains("clk")) {
        FailureClass::ClockBinding
    } else if l.contains("unable to bind") {
        FailureClass::PortBinding
    } else if l.contains("cast") {
        FailureClass::Cast
    } else if l.contains("numeric constant") {
        FailureClass::NumericConstant
    } else {
        FailureClass::Compile
    }
}

/// Verifies one example. Never panics: every failure becomes a status in the report. The caller
/// checks the tools first ([`VerifyOptions::check_tools`]); a tool that is missing anyway fails its
/// stage, which then scores 0.
pub fn verify(code: &str, opts: &VerifyOptions) -> Report {
    let mut r = Report {
        sim_status: SimStatus::Skipped,
        ..Report::default()
    };
    if code.trim().is_empty() {
        r.errors.push("the design is empty".to_string());
        return finish(r, opts);
    }
    let scratch = match prepare_scratch(code, opts) {
        Ok(scratch) => scratch,
        Err(why) => {
            r.errors.push(why.to_string());
            r.sim_status = SimStatus::Error;
            return finish(r, opts);
        }
    };
    run_stages(&mut r, code, opts, scratch.path());
    finish(r, opts)
}

/// Screens the untrusted texts and writes the design into a fresh scratch directory (removed when
/// the returned handle drops).
fn prepare_scratch(code: &str, opts: &VerifyOptions) -> Result<tempfile::TempDir, VerifyError> {
    sandbox::screen_inputs(code, opts)?;
    let scratch = tempfile::Builder::new()
        .prefix("rtlab-verify-")
        .tempdir_in(crate::scratch::scratch_root())
        .map_err(|e| VerifyError::io("create a scratch directory", e))?;
    let dir = scratch.path();
    // Yosys reads a copy where the `always_comb` keyword is `always @*`: Yosys rejects some
    // always_comb blocks that simulators and synthesis tools accept (`default: next = 'x;` "infers a
    // latch").
    std::fs::write(dir.join("design.sv"), code)
        .and_then(|_| std::fs::write(dir.join("design_yosys.sv"), yosys_friendly(code)))
        .map_err(|e| VerifyError::io("write the design", e))?;
    sandbox::screen_expanded(code, opts, dir)?;
    Ok(scratch)
}

/// The chosen stages in order: syntax first (nothing else runs on a design that does not compile),
/// then synth, lint, synth_full, sim and equiv.
fn run_stages(r: &mut Report, code: &str, opts: &VerifyOptions, dir: &Path) {
    syntax_stage(r, opts, dir);
    if !r.syntax_ok {
        if opts.wants(Stage::Sim) && simulates(opts) {
            // The sample does not compile: for a benchmark that is a failed simulation, with its class.
            r.sim_status = SimStatus::CompileErr;
            r.functional = Some(false);
            r.failure_class = Some(compile_failure_class(&r.errors.join("\n")));
        }
        return;
    }
    let netlist = if opts.wants(Stage::Synth) {
        synth_stage(r, opts, dir)
    } else {
        None
    };
    // The top module: given, or the one the light Yosys pass found, or the design's only module.
    let top = opts
        .top
        .clone()
        .or(netlist.as_ref().map(|n| n.top.clone()))
        .or_else(|| match declared_modules(code).as_slice() {
            [only] => Some(only.clone()),
            _ => None,
        });
    if opts.wants(Stage::Lint) {
        lint_stage(r, opts, dir, top.as_deref());
    }
    if opts.wants(Stage::SynthFull) {
        synth_full_stage(r, opts, dir, top.as_deref());
    }
    if opts.wants(Stage::Sim) && simulates(opts) {
        r.stages.push(Stage::Sim);
        simulate(r, code, opts, dir, top.as_deref());
    }
    if opts.wants(Stage::Equiv) {
        equiv_stage(r, code, opts, dir, top.as_deref());
    }
}

fn equiv_stage(r: &mut Report, code: &str, opts: &VerifyOptions, dir: &Path, top: Option<&str>) {
    let Some(reference) = &opts.reference else {
        r.skipped
            .insert(Stage::Equiv, "needs a reference module".into());
        return;
    };
    if available(&YOSYS, r, Stage::Equiv) {
        r.stages.push(Stage::Equiv);
        equivalence(r, code, reference, opts, dir, top);
    }
}

/// True when there is something to simulate against: a testbench or a reference.
fn simulates(opts: &VerifyOptions) -> bool {
    opts.testbench.is_some() || opts.reference.is_some()
}

fn limits(ms: u64) -> Limits {
    Limits {
        timeout: Duration::from_millis(ms),
        ..Limits::default()
    }
}

/// Records a stage that ran past its limit: it fails, and says so.
fn timed_out(r: &mut Report, stage: Stage, tool: &str, ms: u64) {
    r.timed_out.push(stage);
    r.errors.push(format!(
        "{stage}: {tool} did not finish in {ms} ms (raise timeouts.{stage})"
    ));
}

/// Syntax and elaboration with iverilog.
fn syntax_stage(r: &mut Report, opts: &VerifyOptions, dir: &Path) {
    if !available(&IVERILOG, r, Stage::Syntax) {
        return;
    }
    r.stages.push(Stage::Syntax);
    let mut args = vec!["-g2012", "-Wall", "-o", "design.vvp"];
    if let Some(t) = &opts.top {
        args.extend(["-s", t.as_str()]);
    }
    args.push("design.sv");
    let o = run_tool("iverilog", &args, dir, limits(opts.timeouts.syntax));
    r.stage_ms.insert(Stage::Syntax, ms(&o));
    r.syntax_ok = o.ok();
    if o.ended == Ended::TimedOut {
        timed_out(r, Stage::Syntax, "iverilog", opts.timeouts.syntax);
        return;
    }
    // iverilog says "sorry" for constructs it does not support (casts in iverilog 11). Unless told to
    // use iverilog only, Verilator judges the syntax then, and simulates the design later.
    if !r.syntax_ok
        && opts.simulator != Simulator::Iverilog
        && only_unsupported(&o.output)
        && available(&VERILATOR, r, Stage::Syntax)
    {
        let mut args = vec!["--lint-only", "-Wno-fatal", "-Wno-lint", "-Wno-style"];
        if let Some(t) = &opts.top {
            args.extend(["--top-module", t.as_str()]);
        }
        args.push("design.sv");
        let (program, limits) = verilator_command(limits(opts.timeouts.syntax));
        let v = run_tool(program, &args, dir, limits);
        if v.ok() {
            r.syntax_ok = true;
            r.simulator = Some(Simulator::Verilator);
            r.warnings.push(format!(
                "iverilog does not support this design ({}); its syntax was checked, and it is simulated, with verilator",
                lines_matching(&o.output, &["sorry"]).first().cloned().unwrap_or_default()
            ));
            return;
        }
    }
    r.errors
        .extend(lines_matching(&o.output, &["error", "sorry"]));
    r.warnings.extend(lines_matching(&o.output, &["warning"]));
    if !r.syntax_ok && r.errors.is_empty() {
        r.errors.push(format!(
            "iverilog failed ({:?}): {}",
            o.ended,
            o.output.lines().next().unwrap_or("")
        ));
    }
}

/// The light Yosys pass: synthesizable structure, ports, I/O use. Returns the netlist it read.
fn synth_stage(r: &mut Report, opts: &VerifyOptions, dir: &Path) -> Option<yosys::Netlist> {
    if !available(&YOSYS, r, Stage::Synth) {
        return None;
    }
    r.stages.push(Stage::Synth);
    let script = yosys::light_script("design_yosys.sv", opts.top.as_deref(), "design.json");
    let o = run_tool(
        "yosys",
        &["-q", "-p", &script],
        dir,
        limits(opts.timeouts.synth),
    );
    r.stage_ms.insert(Stage::Synth, ms(&o));
    r.warnings.extend(
        lines_matching(&o.output, &["warning"])
            .into_iter()
            .map(|w| format!("yosys: {w}")),
    );
    if o.ended == Ended::TimedOut {
        r.synth_ok = Some(false);
        timed_out(r, Stage::Synth, "yosys", opts.timeouts.synth);
        return None;
    }
    let parsed = if o.ok() {
        std::fs::read_to_string(dir.join("design.json"))
            .map_err(|e| e.to_string())
            .and_then(|j| yosys::analyze(&j).map_err(|e| e.to_string()))
    } else {
        Err(String::new())
    };
    match parsed {
        Ok(n) => {
            r.synth_ok = Some(true);
            r.all_io_used = Some(n.unused_inputs.is_empty() && n.undriven_outputs.is_empty());
            r.unused_inputs = n.unused_inputs.clone();
            r.undriven_outputs = n.undriven_outputs.clone();
            Some(n)
        }
        Err(e) => {
            r.synth_ok = Some(false);
            let mut errs = lines_matching(&o.output, &["error"]);
            if errs.is_empty() {
                errs.push(if e.is_empty() {
                    format!("yosys failed ({:?})", o.ended)
                } else {
                    e
                });
            }
            r.errors
                .extend(errs.into_iter().map(|e| format!("yosys: {e}")));
            None
        }
    }
}

/// Verilator's lint (-Wall): the warning codes it reports.
fn lint_stage(r: &mut Report, opts: &VerifyOptions, dir: &Path, top: Option<&str>) {
    if !available(&VERILATOR, r, Stage::Lint) {
        return;
    }
    r.stages.push(Stage::Lint);
    let mut args = vec![
        "--lint-only",
        "-Wall",
        "-Wno-fatal",
        "-Wno-DECLFILENAME",
        "--no-timing",
    ];
    if let Some(t) = top {
        args.extend(["--top-module", t]);
    }
    args.push("design.sv");
    let (program, limits) = verilator_command(limits(opts.timeouts.lint));
    let o = run_tool(program, &args, dir, limits);
    r.stage_ms.insert(Stage::Lint, ms(&o));
    if o.ended == Ended::TimedOut {
        timed_out(r, Stage::Lint, "verilator", opts.timeouts.lint);
        return;
    }
    let mut codes: Vec<String> = o
        .output
        .lines()
        .filter_map(|l| l.trim().strip_prefix("%Warning-"))
        .filter_map(|l| l.split(':').next())
        .map(str::to_string)
        .collect();
    codes.sort();
    codes.dedup();
    r.lint = codes;
    r.warnings.extend(
        lines_matching(&o.output, &["%warning"])
            .into_iter()
            .take(10),
    );
    // Verilator rejecting a construct iverilog accepts is a limit of the linter, not a lint finding.
    r.warnings.extend(
        lines_matching(&o.output, &["%error"])
            .into_iter()
            .take(5)
            .map(|e| format!("verilator: {e}")),
    );
}

/// Full synthesis (`synth`), only when asked: some designs take many seconds.
fn synth_full_stage(r: &mut Report, opts: &VerifyOptions, dir: &Path, top: Option<&str>) {
    if !available(&YOSYS, r, Stage::SynthFull) {
        return;
    }
    r.stages.push(Stage::SynthFull);
    let script = match top {
        Some(t) => format!("read_verilog -sv design_yosys.sv; synth -top {t}"),
        None => "read_verilog -sv design_yosys.sv; synth -auto-top".to_string(),
    };
    let o = run_tool(
        "yosys",
        &["-q", "-p", &script],
        dir,
        limits(opts.timeouts.synth_full),
    );
    r.stage_ms.insert(Stage::SynthFull, ms(&o));
    if o.ended == Ended::TimedOut {
        r.synth_ok = Some(false);
        timed_out(r, Stage::SynthFull, "yosys synth", opts.timeouts.synth_full);
    } else if !o.ok() {
        r.killed |= o.ended == Ended::Signaled;
        r.synth_ok = Some(false);
        r.errors.push(format!(
            "yosys synth failed: {}",
            lines_matching(&o.output, &["error"]).join("; ")
        ));
    }
}

/// The simulation stage: write the testbench (the user's, or a differential one against the
/// reference), build and run it, and read the verdict.
fn simulate(r: &mut Report, code: &str, opts: &VerifyOptions, dir: &Path, top: Option<&str>) {
    let ready = match opts.simulator {
        Simulator::Verilator => available(&VERILATOR, r, Stage::Sim),
        _ => available(&IVERILOG, r, Stage::Sim) && available(&VVP, r, Stage::Sim),
    };
    if !ready {
        r.sim_status = SimStatus::Error;
        r.functional = Some(false);
        return;
    }
    let files = match write_sim_files(r, code, opts, dir, top) {
        Ok(files) => files,
        Err(e) => {
            r.sim_status = SimStatus::Error;
            r.errors.push(e.to_string());
            return;
        }
    };
    let (build, run) = build_and_run(r, &files, dir, opts);
    let Some(o) = run else {
        compile_failed(r, &build);
        return;
    };
    r.stage_ms.insert(Stage::Sim, ms(&build) + ms(&o));
    r.sim_log = o.output.chars().take(4000).collect();
    read_verdict(r, &o, opts);
}

fn write_file(dir: &Path, name: &str, text: &str) -> Result<(), VerifyError> {
    std::fs::write(dir.join(name), text).map_err(|e| VerifyError::io(format!("write {name}"), e))
}

/// Writes what the simulator compiles besides `design.sv`, and returns every file, design first.
fn write_sim_files(
    r: &mut Report,
    code: &str,
    opts: &VerifyOptions,
    dir: &Path,
    top: Option<&str>,
) -> Result<Vec<String>, VerifyError> {
    let mut files = vec!["design.sv".to_string()];
    match (&opts.testbench, &opts.reference) {
        (Some(tb), reference) => {
            write_file(dir, "tb.sv", tb)?;
            files.push("tb.sv".into());
            if let Some(reference) = reference {
                write_file(dir, "ref.sv", reference)?;
                files.push("ref.sv".into());
            }
        }
        (None, Some(reference)) => {
            write_differential(r, code, reference, opts, dir, top)?;
            files.push("ref.sv".into());
            files.push("tb.sv".into());
        }
        (None, None) => {}
    }
    Ok(files)
}

/// A differential testbench: the reference's ports drive both the design (as `TopModule`) and the
/// reference (as `RefModule`), and every output is compared.
fn write_differential(
    r: &mut Report,
    code: &str,
    reference: &str,
    opts: &VerifyOptions,
    dir: &Path,
    top: Option<&str>,
) -> Result<(), VerifyError> {
    let ref_net = reference_ports(r, reference, dir, limits(opts.timeouts.sim))?;
    let dut_code = design_as_top_module(code, top)?;
    let ref_code = rename_module(reference, &ref_net.top, "RefModule");
    write_file(dir, "design.sv", &dut_code)?;
    write_file(dir, "ref.sv", &ref_code)?;
    let testbench = difftb::generate(&ref_net.ports, opts.diff_cycles, opts.seed);
    write_file(dir, "tb.sv", &testbench)
}

/// The reference's top module and ports, read by Yosys, or by Verilator where Yosys cannot parse it.
fn reference_ports(
    r: &mut Report,
    reference: &str,
    dir: &Path,
    quick: Limits,
) -> Result<yosys::Netlist, VerifyError> {
    write_file(dir, "ref_orig.sv", &yosys_friendly(reference))?;
    // Ports only: no flatten or checks, so little the reference does inside can stop us.
    let script = "read_verilog -sv ref_orig.sv; hierarchy -auto-top; proc; write_json ref.json";
    let o = run_tool("yosys", &["-q", "-p", script], dir, quick);
    if let Ok(json) = std::fs::read_to_string(dir.join("ref.json")) {
        return yosys::analyze(&json);
    }
    // Yosys 0.2x rejects some SystemVerilog (enum casts) that Verilator reads.
    let yosys_error = lines_matching(&o.output, &["error"]).join("; ");
    write_file(dir, "ref_ports.sv", reference)?;
    let (top, ports) = verilator_ports::read(dir, "ref_ports.sv", quick)
        .map_err(|e| VerifyError::reference_unreadable(yosys_error.clone(), Some(e)))?;
    r.warnings.push(format!(
        "Yosys cannot read the reference ({yosys_error}); its ports were read with Verilator"
    ));
    Ok(yosys::Netlist {
        top,
        ports,
        ..Default::default()
    })
}

/// Builds and runs the simulation with the chosen simulator: `(build, Some(run))`, or `(build, None)`
/// when it did not build. With `auto`, Verilator takes over where iverilog says "sorry:".
fn build_and_run(
    r: &mut Report,
    files: &[String],
    dir: &Path,
    opts: &VerifyOptions,
) -> (Outcome, Option<Outcome>) {
    let verilator_first = match opts.simulator {
        Simulator::Verilator => true,
        Simulator::Iverilog => false,
        // The syntax stage already found that iverilog does not support this design.
        Simulator::Auto => r.simulator == Some(Simulator::Verilator),
    };
    if verilator_first {
        return verilator_sim(r, files, dir, opts);
    }
    match iverilog_sim(r, files, dir, opts) {
        // iverilog cannot compile a construct it does not support ("sorry:"): with `auto`,
        // Verilator simulates instead, and the result says so.
        Err(compile)
            if opts.simulator == Simulator::Auto
                && only_unsupported(&compile.output)
                && tool_versions()
                    .get("verilator")
                    .cloned()
                    .flatten()
                    .is_some() =>
        {
            r.warnings.push(format!(
                "iverilog does not support this testbench or design ({}); simulated with verilator",
                lines_matching(&compile.output, &["sorry"])
                    .first()
                    .cloned()
                    .unwrap_or_default()
            ));
            verilator_sim(r, files, dir, opts)
        }
        Err(compile) => (compile, None),
        Ok(pair) => pair,
    }
}

/// How the run ended and what the testbench printed, as the report's status, class and verdict.
fn read_verdict(r: &mut Report, o: &Outcome, opts: &VerifyOptions) {
    let error = match &o.ended {
        Ended::Exited(_) => None,
        Ended::TimedOut => {
            r.sim_status = SimStatus::Timeout;
            r.failure_class = Some(FailureClass::Timeout);
            r.functional = Some(false);
            timed_out(r, Stage::Sim, "the simulation", opts.timeouts.sim);
            return;
        }
        Ended::OutputLimit => Some("simulation printed more than 1 MiB; stopped".to_string()),
        Ended::Cancelled => Some("cancelled by Ctrl-C".to_string()),
        Ended::NotStarted(e) => Some(format!("the simulation did not start: {e}")),
        Ended::Signaled => {
            r.killed = true;
            Some(
                "the simulation was killed by a limit: a file past 64 MiB, memory past 4 GiB or CPU time"
                    .to_string(),
            )
        }
    };
    let verdict = parse_verdict(&o.output);
    match (error, verdict) {
        (Some(error), _) => {
            r.sim_status = SimStatus::Error;
            r.functional = Some(false);
            r.errors.push(error);
        }
        (None, Some((pass, mismatches, samples))) => {
            r.sim_status = if pass {
                SimStatus::Pass
            } else {
                SimStatus::Mismatch
            };
            r.functional = Some(pass);
            r.mismatches = mismatches;
            r.samples = samples;
            if !pass {
                r.failure_class = Some(FailureClass::Mismatch);
            }
        }
        (None, None) => {
            r.sim_status = SimStatus::Error;
            r.functional = Some(false);
            r.errors.push("the testbench printed no verdict (no `Mismatches: N in M samples`, `TEST PASSED`/`TEST FAILED` or `Your Design Passed`)".into());
        }
    }
}

/// What the simulation's time limit leaves after a build that took `build`.
fn time_left(opts: &VerifyOptions, build: &Outcome) -> u64 {
    opts.timeouts
        .sim
        .saturating_sub(build.elapsed.as_millis() as u64)
        .max(1)
}

/// Compiles with iverilog and runs vvp: `Ok((compile, run))`, or `Err(compile)` when it did not
/// compile.
fn iverilog_sim(
    r: &mut Report,
    files: &[String],
    dir: &Path,
    opts: &VerifyOptions,
) -> Result<(Outcome, Option<Outcome>), Outcome> {
    let mut args: Vec<&str> = vec![
        "-g2012",
        "-Wall",
        "-Winfloop",
        "-Wno-timescale",
        "-o",
        "sim.vvp",
    ];
    args.extend(files.iter().map(String::as_str));
    r.simulator = Some(Simulator::Iverilog);
    let compile = run_tool("iverilog", &args, dir, limits(opts.timeouts.sim));
    if !compile.ok() {
        return Err(compile);
    }
    let run = run_tool(
        "vvp",
        &["-n", "sim.vvp"],
        dir,
        limits(time_left(opts, &compile)),
    );
    Ok((compile, Some(run)))
}

/// Builds the testbench with Verilator (`--binary --timing`: delays and all; its runtime library
/// compiled once and shared, see [`verilator_build`]) and runs it. The run is `None` when it did not
/// build.
fn verilator_sim(
    r: &mut Report,
    files: &[String],
    dir: &Path,
    opts: &VerifyOptions,
) -> (Outcome, Option<Outcome>) {
    r.simulator = Some(Simulator::Verilator);
    let verilator_build::Build {
        outcome: build,
        rebuilt,
    } = verilator_build::build(files, dir, limits(opts.timeouts.sim));
    if rebuilt {
        r.warnings.push(verilator_build::REBUILT.into());
    }
    if !build.ok() {
        return (build, None);
    }
    let program = verilator_build::program(dir).display().to_string();
    let run = run_tool(&program, &[], dir, limits(time_left(opts, &build)));
    (build, Some(run))
}

/// The testbench did not compile (or did not build in time): a failed simulation, with its class.
fn compile_failed(r: &mut Report, build: &Outcome) {
    r.stage_ms.insert(Stage::Sim, ms(build));
    r.functional = Some(false);
    r.sim_log = build.output.chars().take(4000).collect();
    if build.ended == Ended::TimedOut {
        r.sim_status = SimStatus::Timeout;
        r.failure_class = Some(FailureClass::Timeout);
        r.timed_out.push(Stage::Sim);
        r.errors
            .push("sim: the testbench did not compile in time (raise timeouts.sim)".into());
        return;
    }
    r.sim_status = SimStatus::CompileErr;
    r.failure_class = Some(compile_failure_class(&build.output));
    let tool = r.simulator.unwrap_or(Simulator::Iverilog);
    r.errors.extend(
        lines_matching(&build.output, &["error", "sorry"])
            .into_iter()
            .map(|e| format!("sim compile ({tool}): {e}")),
    );
}

/// True when every error iverilog reported is a "sorry:" (a construct it does not support yet), not
/// a fault in the code.
fn only_unsupported(output: &str) -> bool {
    let mut sorry = false;
    for line in output.lines().map(str::to_lowercase) {
        if line.contains("sorry:") {
            sorry = true;
        } else if line.contains("error") && !line.contains("error(s) during") {
            return false;
        }
    }
    sorry
}

/// Writes the two sides of the equivalence miter into `dir`: the reference's top renamed
/// `RefModule` (`eq_ref.sv`) and the design's top renamed `TopModule` (`eq_dut.sv`).
fn write_miter_inputs(
    code: &str,
    reference: &str,
    opts: &VerifyOptions,
    dir: &Path,
    top: Option<&str>,
) -> Result<(), VerifyError> {
    let quick = limits(opts.timeouts.synth);
    write_file(dir, "eq_ref_orig.sv", &yosys_friendly(reference))?;
    let o = run_tool(
        "yosys",
        &[
            "-q",
            "-p",
            "read_verilog -sv eq_ref_orig.sv; hierarchy -auto-top; proc; write_json eq_ref.json",
        ],
        dir,
        quick,
    );
    let json = std::fs::read_to_string(dir.join("eq_ref.json")).map_err(|_| {
        VerifyError::reference_unreadable(lines_matching(&o.output, &["error"]).join("; "), None)
    })?;
    let ref_top = yosys::analyze(&json)?.top;
    let dut = design_as_top_module(&yosys_friendly(code), top)?;
    write_file(
        dir,
        "eq_ref.sv",
        &rename_module(&yosys_friendly(reference), &ref_top, "RefModule"),
    )?;
    write_file(dir, "eq_dut.sv", &dut)
}

/// The design with its top module named `TopModule`, as the differential testbench and the
/// equivalence miter instantiate it.
fn design_as_top_module(code: &str, top: Option<&str>) -> Result<String, VerifyError> {
    let top = top.ok_or(VerifyError::NoTop)?;
    Ok(if top == "TopModule" {
        code.to_string()
    } else {
        rename_module(code, top, "TopModule")
    })
}

/// Proves the design equivalent to the reference with Yosys: the quick proof first (`equiv_proof`),
/// else a miter of the two (outputs compared, `x` in the reference a don't-care), then `sat
/// -tempinduct` from an all-zero initial state. A failed base case is a real counterexample
/// ("different"); an induction that does not close within 20 steps proves nothing ("unknown").
fn equivalence(
    r: &mut Report,
    code: &str,
    reference: &str,
    opts: &VerifyOptions,
    dir: &Path,
    top: Option<&str>,
) {
    if let Err(e) = write_miter_inputs(code, reference, opts, dir, top) {
        r.equiv = Some(Equivalence::Unknown);
        r.warnings.push(format!("equiv: {e}"));
        return;
    }
    let limit = limits(opts.timeouts.synth_full);
    if let Some(took) = equiv_proof::prove(dir, limit) {
        r.stage_ms.insert(Stage::Equiv, took);
        r.equiv = Some(Equivalence::Equivalent);
        return;
    }
    let script = equiv_proof::sat_on_miter("-tempinduct -maxsteps 20");
    let o = run_tool("yosys", &["-p", &script], dir, limit);
    r.stage_ms.insert(Stage::Equiv, ms(&o));
    let verdict = if o.ok() {
        Equivalence::Equivalent
    } else if o.ended == Ended::TimedOut {
        Equivalence::Unknown
    } else {
        // The last phase Yosys was in when the proof failed tells a counterexample from a weak induction.
        let last_phase = o
            .output
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with('['))
            .unwrap_or("");
        if last_phase.contains("base case") {
            Equivalence::Different
        } else {
            let errors: Vec<String> = lines_matching(&o.output, &["error"])
                .into_iter()
                .filter(|l| !l.contains("proof did fail"))
                .collect();
            if !errors.is_empty() {
                r.warnings.push(format!("equiv: {}", errors.join("; ")));
            }
            Equivalence::Unknown
        }
    };
    if verdict == Equivalence::Different {
        r.errors.push(
            "equiv: Yosys found an input sequence on which the design and the reference differ"
                .into(),
        );
    }
    r.equiv = Some(verdict);
}

/// (passed, mismatches, samples) from a testbench log: VerilogEval, A7 or RTLLM style.
pub fn parse_verdict(log: &str) -> Option<(bool, Option<i64>, Option<i64>)> {
    for line in log.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("Mismatches: ") {
            let mut parts = rest.split_whitespace();
            let n = parts.next().and_then(|v| v.parse::<i64>().ok());
            let m = parts.nth(1).and_then(|v| v.parse::<i64>().ok());
            if let (Some(n), Some(m)) = (n, m) {
                return Some((n == 0, Some(n), Some(m)));
            }
        }
    }
    if log.contains("TEST FAILED") {
        return Some((false, None, None));
    }
    if log.contains("TEST PASSED") {
        return Some((true, None, None));
    }
    if log.contains("Your Design Passed") {
        return Some((true, None, None));
    }
    if log.contains("Error") && log.contains("===") {
        return Some((false, None, None));
    }
    None
}

/// The score: the weighted mean over the stages chosen for this example (`opts.stages`, with `sim`
/// only where there is a testbench or reference). A chosen stage scores 0 when it failed, timed out
/// or could not run; it never drops out of the mean. A design that does not compile scores 0.
fn finish(mut r: Report, opts: &VerifyOptions) -> Report {
    let w = &opts.weights;
    if !r.syntax_ok {
        r.score = 0.0;
        return r;
    }
    let ran_past_limit = |stage: Stage| r.timed_out.contains(&stage);
    let mut parts: Vec<(f64, f64)> = vec![(w.syntax, 1.0)];
    if opts.wants(Stage::Synth) {
        parts.push((w.synth, if r.synth_ok == Some(true) { 1.0 } else { 0.0 }));
        // I/O use is read from the light pass's netlist: a penalty, not a fail (correct designs can
        // leave an input unused); no netlist, no credit.
        let io = match r.all_io_used {
            Some(_) => {
                let flagged = (r.unused_inputs.len() + r.undriven_outputs.len()) as f64;
                (1.0 - 0.5 * flagged).max(0.0)
            }
            None => 0.0,
        };
        parts.push((w.io, io));
    }
    if opts.wants(Stage::Lint) {
        let ran = r.stages.contains(&Stage::Lint) && !ran_past_limit(Stage::Lint);
        let value = if ran {
            let penalized = r
                .lint
                .iter()
                .filter(|c| !LINT_NOT_PENALIZED.contains(&c.as_str()))
                .count() as f64;
            (1.0 - 0.25 * penalized).max(0.0)
        } else {
            0.0
        };
        parts.push((w.lint, value));
    }
    if opts.wants(Stage::Sim) && simulates(opts) {
        parts.push((
            w.functional,
            if r.functional == Some(true) { 1.0 } else { 0.0 },
        ));
    }
    let total: f64 = parts.iter().map(|p| p.0).sum();
    r.score = if total > 0.0 {
        parts.iter().map(|p| p.0 * p.1).sum::<f64>() / total
    } else {
        0.0
    };
    r.score = (r.score * 10000.0).round() / 10000.0;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_renaming_touches_declarations_only() {
        let code = "module adder(input a); endmodule\nmodule adder_tb; adder u(.a(1)); endmodule";
        let out = rename_module(code, "adder", "TopModule");
        assert!(out.starts_with("module TopModule(input a)"));
        assert!(out.contains("module adder_tb;"), "{out}");
    }

    #[test]
    fn yosys_copy_rewrites_only_the_keywords() {
        let code = "module m(output reg out_always_comb, output reg always_latch_q);\n\
                    // always_comb in a comment\n\
                    always_comb out_always_comb = 1'b1; /* always_latch */\n\
                    always_latch always_latch_q = \"always_comb\" != 0;\n\
                    endmodule";
        let out = yosys_friendly(code);
        assert_eq!(
            out,
            "module m(output reg out_always_comb, output reg always_latch_q);\n\
             // always_comb in a comment\n\
             always @* out_always_comb = 1'b1; /* always_latch */\n\
             always @* always_latch_q = \"always_comb\" != 0;\n\
             endmodule"
        );
        assert_eq!(yosys_friendly("\\always_comb x"), "\\always_comb x");
    }

    #[test]
    fn declared_modules_are_read_from_code_only() {
        let code = "// module commented_out;\nmodule a(input x); endmodule\n/* module b; */\nmodule c; wire module_x; endmodule";
        assert_eq!(declared_modules(code), ["a", "c"]);
    }

    #[test]
    fn verdicts_of_the_three_testbench_styles() {
        assert_eq!(
            parse_verdict("Hint: ...\nMismatches: 0 in 217 samples\n"),
            Some((true, Some(0), Some(217)))
        );
        assert_eq!(
            parse_verdict("Mismatches: 3 in 100 samples"),
            Some((false, Some(3), Some(100)))
        );
        assert_eq!(
            parse_verdict("...\nTEST PASSED\n"),
            Some((true, None, None))
        );
        assert_eq!(
            parse_verdict("TEST FAILED at 30ns"),
            Some((false, None, None))
        );
        assert_eq!(
            parse_verdict("===========Your Design Passed==========="),
            Some((true, None, None))
        );
        assert_eq!(parse_verdict("nothing useful"), None);
    }
}
