//! Verilator simulation builds, with Verilator's runtime library compiled once and shared.
//!
//! `verilator --binary` compiles the design's C++ and, every time, the same runtime library
//! (`verilated.cpp` and its threads and timing support). Measured on a 2-core AMD EPYC: of a 7.2 s
//! build of VerilogEval's `Prob151_review2015_fsm`, 5.5 s went to the runtime (`verilated.o` alone
//! 3.8 s); in a `df.verify` of the 156 VerilogEval references, whose two Verilator builds are the
//! only ones, the C++ compiler took 40% of all CPU time.
//!
//! So the runtime is built once, from a one-line module with exactly the options of every build, into
//! a per-user cache (`$XDG_CACHE_HOME/rtlab/verilator-runtime/KEY/`, keyed on Verilator's and g++'s
//! versions, the options and the architecture). A build copies those objects into its scratch
//! directory and tells make (`--assume-old`) not to rebuild them; everything the design needs is
//! compiled as before.
//!
//! Invariant: the shared objects can cost time, never change a verdict. A build that fails after its
//! front end passed (a compile or link error, not a Verilator `%Error`) is built again from nothing,
//! and if that one builds, the cached objects are thrown away (this process stops using them, and the
//! next one builds them anew). Objects are copied, never hard-linked: a tool in a scratch directory
//! cannot write into the cache.

use super::process::{run_tool, tool_version, Ended, Limits, Outcome};
use crate::VerifyError;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// The options of every Verilator simulation build, and of the shared runtime's: the objects are
/// only reused between builds with exactly these.
const BUILD_OPTIONS: &[&str] = &[
    "--binary",
    "--timing",
    "-Wno-fatal",
    "-Wno-lint",
    "-Wno-style",
];

/// The build's directory under the scratch directory, and the program it builds there.
const MDIR: &str = "verilated";
const PROGRAM: &str = "sim";

/// The program a build in `dir` made.
pub fn program(dir: &Path) -> PathBuf {
    dir.join(MDIR).join(PROGRAM)
}

/// The row's warning when the build with the shared runtime failed and one without it was made.
pub const REBUILT: &str = "verilator: the shared runtime objects did not link; built without them \
    (they are rebuilt next run)";

/// How long the one-off runtime build may take (three C++ files; about 6 s of CPU on a 2-core EPYC).
const RUNTIME_BUILD_TIMEOUT: Duration = Duration::from_secs(600);

/// A directory of prebuilt runtime objects (`verilated*.o`).
#[derive(Debug, Clone)]
pub struct Runtime {
    dir: PathBuf,
    objects: Vec<String>,
}

impl Runtime {
    /// The runtime in `dir`, when it holds at least one `verilated*.o`.
    fn read(dir: &Path) -> Option<Runtime> {
        let mut objects: Vec<String> = std::fs::read_dir(dir)
            .ok()?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("verilated") && n.ends_with(".o"))
            .collect();
        objects.sort();
        (!objects.is_empty()).then(|| Runtime {
            dir: dir.to_path_buf(),
            objects,
        })
    }

    /// Copies the objects into `mdir` and returns the arguments that keep make from rebuilding them.
    fn place(&self, mdir: &Path) -> std::io::Result<Vec<String>> {
        std::fs::create_dir_all(mdir)?;
        let mut args = Vec::new();
        for name in &self.objects {
            std::fs::copy(self.dir.join(name), mdir.join(name))?;
            args.push("-MAKEFLAGS".to_string());
            args.push(format!("--assume-old={name}"));
        }
        Ok(args)
    }
}

/// A Verilator build's outcome (its time includes a rebuild from nothing, when one was needed).
pub struct Build {
    pub outcome: Outcome,
    /// The build with the shared runtime failed after the front end, so it was built again without.
    pub rebuilt: bool,
}

/// Builds `files` with Verilator into `dir/verilated/sim`, with the shared runtime when there is one.
pub fn build(files: &[String], dir: &Path, limits: Limits) -> Build {
    build_with(shared_runtime().as_ref(), files, dir, limits)
}

fn build_with(runtime: Option<&Runtime>, files: &[String], dir: &Path, limits: Limits) -> Build {
    let mdir = dir.join(MDIR);
    let placed = runtime.and_then(|rt| rt.place(&mdir).ok());
    let Some(extra) = placed else {
        let outcome = run_build(files, dir, &[], limits);
        return Build {
            outcome,
            rebuilt: false,
        };
    };
    let warm = run_build(files, dir, &extra, limits);
    if warm.ok() || !failed_after_front_end(&warm, &mdir) {
        return Build {
            outcome: warm,
            rebuilt: false,
        };
    }
    // The design passed Verilator's front end and the C++ did not build or link: the shared objects
    // may be at fault, so the verdict comes from a build that does not use them.
    let _ = std::fs::remove_dir_all(&mdir);
    let mut cold = run_build(files, dir, &[], limits);
    if cold.ok() {
        if let Some(rt) = runtime {
            distrust(rt);
        }
    }
    cold.elapsed += warm.elapsed;
    Build {
        outcome: cold,
        rebuilt: true,
    }
}

fn run_build(files: &[String], dir: &Path, extra: &[String], limits: Limits) -> Outcome {
    let mut args: Vec<&str> = BUILD_OPTIONS.to_vec();
    args.extend(extra.iter().map(String::as_str));
    args.extend(["--Mdir", MDIR, "-o", PROGRAM]);
    args.extend(files.iter().map(String::as_str));
    run_tool("verilator", &args, dir, limits)
}

/// True when a build exited with an error after Verilator's front end had passed: it wrote the
/// makefiles (`V<top>_classes.mk`), so the generated C++ failed to compile or link.
fn failed_after_front_end(o: &Outcome, mdir: &Path) -> bool {
    let wrote_makefiles = std::fs::read_dir(mdir).is_ok_and(|entries| {
        entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .any(|n| n.ends_with("_classes.mk"))
    });
    matches!(o.ended, Ended::Exited(code) if code != 0) && wrote_makefiles
}

/// The process's shared runtime. None: not tried yet; Some(None): it cannot be built here, or it
/// turned out bad, and builds compile their own.
static RUNTIME: Mutex<Option<Option<Runtime>>> = Mutex::new(None);

fn runtime_state() -> std::sync::MutexGuard<'static, Option<Option<Runtime>>> {
    RUNTIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The objects turned out bad: they are deleted, and this process stops using them.
fn distrust(rt: &Runtime) {
    *runtime_state() = Some(None);
    let _ = std::fs::remove_dir_all(&rt.dir);
}

/// The shared runtime, built on first use (other builds wait for it: they would spend the same time
/// compiling it themselves). `None` when it cannot be built or turned out bad: builds then compile
/// their own, exactly as Verilator does by itself. A build stopped by Ctrl-C is not remembered as a
/// failure: the REPL or kernel session goes on, and its next Verilator build tries again.
fn shared_runtime() -> Option<Runtime> {
    let mut state = runtime_state();
    if let Some(known) = state.as_ref() {
        return known.clone();
    }
    let root = dirs::cache_dir()?.join("rtlab").join("verilator-runtime");
    let built = prepare(&root, &runtime_key()?).ok();
    if built.is_some() || !rtlab_core::cancel_requested() {
        *state = Some(built.clone());
    }
    built
}

/// What the objects depend on: Verilator's version (as the verifier probed it), the compiler's, the
/// options and the machine.
fn runtime_key() -> Option<String> {
    let verilator = crate::tool_versions().get("verilator").cloned().flatten()?;
    let compiler = tool_version("g++", &["--version"])?;
    let mut h = blake3::Hasher::new();
    for part in [
        verilator.as_str(),
        compiler.as_str(),
        &BUILD_OPTIONS.join(" "),
        std::env::consts::ARCH,
    ] {
        h.update(part.as_bytes());
        h.update(b"\0");
    }
    Some(h.finalize().to_hex()[..16].to_string())
}

/// The runtime under `root/key`, built there first when it is not. Processes that build it at once
/// each build in their own directory and rename it into place; the first rename wins and the others
/// use the winner's.
pub fn prepare(root: &Path, key: &str) -> Result<Runtime, VerifyError> {
    let dir = root.join(key);
    if let Some(rt) = Runtime::read(&dir) {
        return Ok(rt);
    }
    let io = |doing: String| move |e| VerifyError::io(doing, e);
    std::fs::create_dir_all(root).map_err(io(format!("create {}", root.display())))?;
    let staging = tempfile::Builder::new()
        .prefix(".building-")
        .tempdir_in(root)
        .map_err(io(format!("create a directory in {}", root.display())))?;
    let work = staging.path();
    std::fs::write(
        work.join("rtlab_runtime.sv"),
        // A delay, so that the timing support (`--timing`) is part of the runtime.
        "module rtlab_runtime; initial begin #1; $finish; end endmodule\n",
    )
    .map_err(io(format!("write in {}", work.display())))?;
    let limits = Limits {
        timeout: RUNTIME_BUILD_TIMEOUT,
        ..Limits::default()
    };
    let built = run_build(&["rtlab_runtime.sv".into()], work, &[], limits);
    if !built.ok() {
        return Err(VerifyError::ToolOutput(format!(
            "Verilator's runtime did not build ({:?}): {}",
            built.ended,
            built.output.chars().take(2000).collect::<String>()
        )));
    }
    let objects = work.join("objects");
    std::fs::create_dir(&objects).map_err(io(format!("create {}", objects.display())))?;
    let made = Runtime::read(&work.join(MDIR)).ok_or_else(|| {
        VerifyError::ToolOutput("Verilator's runtime build left no verilated*.o".into())
    })?;
    for name in &made.objects {
        std::fs::rename(made.dir.join(name), objects.join(name))
            .map_err(io(format!("move {name} into {}", objects.display())))?;
    }
    // A directory renames onto a missing name or fails; when another process got there first, its
    // objects (built the same way) are the ones used.
    let _ = std::fs::rename(&objects, &dir);
    Runtime::read(&dir).ok_or_else(|| {
        VerifyError::ToolOutput(format!("no Verilator runtime objects in {}", dir.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESIGN: &str = "module tb; reg [3:0] c = 0; always #1 c <= c + 1;\n\
        initial begin #9; $display(\"count=%0d\", c); $finish; end endmodule\n";

    fn scratch_with_design() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tb.sv"), DESIGN).unwrap();
        dir
    }

    fn limits() -> Limits {
        Limits {
            timeout: Duration::from_secs(300),
            ..Limits::default()
        }
    }

    fn simulate(dir: &Path) -> String {
        run_tool(program(dir).to_str().unwrap(), &[], dir, limits()).output
    }

    /// The lines make printed for compiling one of Verilator's runtime sources.
    fn runtime_compiles(build: &Outcome) -> Vec<&str> {
        build
            .output
            .lines()
            .filter(|l| l.contains("include/verilated") && l.contains(".cpp"))
            .collect()
    }

    #[test]
    fn a_build_with_the_shared_runtime_compiles_only_the_design_and_simulates_the_same() {
        let cache = tempfile::tempdir().unwrap();
        let rt = prepare(cache.path(), "k").unwrap();
        assert!(rt.objects.contains(&"verilated.o".to_string()), "{rt:?}");
        // Prepared again, it is read, not rebuilt.
        let stamp = |p: &Path| {
            std::fs::metadata(p.join("verilated.o"))
                .unwrap()
                .modified()
                .unwrap()
        };
        let before = stamp(&rt.dir);
        let again = prepare(cache.path(), "k").unwrap();
        assert_eq!(stamp(&again.dir), before);

        let warm_dir = scratch_with_design();
        let warm = build_with(Some(&rt), &["tb.sv".into()], warm_dir.path(), limits()).outcome;
        assert!(warm.ok(), "{}", warm.output);
        assert_eq!(
            runtime_compiles(&warm),
            Vec::<&str>::new(),
            "{}",
            warm.output
        );
        let cold_dir = scratch_with_design();
        let cold = build_with(None, &["tb.sv".into()], cold_dir.path(), limits()).outcome;
        assert!(cold.ok(), "{}", cold.output);
        assert!(!runtime_compiles(&cold).is_empty(), "{}", cold.output);
        assert!(simulate(warm_dir.path()).contains("count="));
        assert_eq!(simulate(warm_dir.path()), simulate(cold_dir.path()));
    }

    /// A cached runtime in `cache/k` whose `verilated.o` is no object file: a link with it fails.
    fn broken_runtime(cache: &Path) -> (Runtime, PathBuf) {
        let dir = cache.join("k");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("verilated.o"), "garbage").unwrap();
        (Runtime::read(&dir).unwrap(), dir)
    }

    #[test]
    fn bad_shared_objects_cost_a_rebuild_never_a_verdict() {
        let cache = tempfile::tempdir().unwrap();
        let (rt, dir) = broken_runtime(cache.path());
        let scratch = scratch_with_design();
        let built = build_with(Some(&rt), &["tb.sv".into()], scratch.path(), limits());
        assert!(built.rebuilt);
        assert!(built.outcome.ok(), "{}", built.outcome.output);
        assert!(simulate(scratch.path()).contains("count="));
        assert!(!dir.exists(), "the bad objects were thrown away");
        assert!(
            shared_runtime().is_none(),
            "this process stopped using them"
        );
        // Other tests in this process may use the real cache again.
        *runtime_state() = None;
    }

    #[test]
    fn a_design_verilator_rejects_is_not_built_twice() {
        let cache = tempfile::tempdir().unwrap();
        let (rt, dir) = broken_runtime(cache.path());
        let scratch = tempfile::tempdir().unwrap();
        std::fs::write(
            scratch.path().join("tb.sv"),
            "module tb; wire x = ; endmodule\n",
        )
        .unwrap();
        let built = build_with(Some(&rt), &["tb.sv".into()], scratch.path(), limits());
        assert!(!built.outcome.ok());
        let output = &built.outcome.output;
        assert!(output.contains("%Error: tb.sv:1"), "{output}");
        assert!(!built.rebuilt, "{output}");
        assert!(dir.join("verilated.o").exists());
    }
}
