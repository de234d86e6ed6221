//! Running an external tool on untrusted input: its own process group, rlimits (CPU time, address
//! space, file size, processes), a wall-clock timeout that kills the whole group, and capped output.
//!
//! Invariant: only this module spawns processes for the verifier, and every child is reaped.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Limits for one tool run.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub timeout: Duration,
    /// Bytes of stdout+stderr kept; past this the tool is killed (a design printing gigabytes).
    pub max_output: usize,
    pub max_memory_bytes: u64,
    pub max_file_bytes: u64,
    /// Start the tool with its stack limit raised to the hard limit, as Verilator's script does
    /// (`ulimit -s unlimited`) before it runs `verilator_bin`: deep expressions recurse deeply.
    pub unlimited_stack: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(30),
            max_output: 1 << 20,
            max_memory_bytes: 4 << 30,
            max_file_bytes: 64 << 20,
            unlimited_stack: false,
        }
    }
}

/// How a tool run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ended {
    Exited(i32),
    Signaled,
    TimedOut,
    OutputLimit,
    Cancelled,
    /// The tool could not be started (not installed, say).
    NotStarted(String),
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub ended: Ended,
    /// stdout and stderr, interleaved by arrival order per stream (stdout first), capped.
    pub output: String,
    pub elapsed: Duration,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.ended == Ended::Exited(0)
    }
}

/// Puts `limits` on the running process `pid` (prlimit(2)), never above what rtlab itself runs under
/// (a `ulimit -f` around rtlab binds its tools too, and raising a hard limit needs a privilege rtlab
/// should not use). A tool that already exited (ESRCH) needs none.
fn set_limits(pid: i32, limits: Limits) -> std::io::Result<()> {
    let cpu = limits.timeout.as_secs() + 2;
    for (resource, value) in [
        (libc::RLIMIT_CPU, cpu),
        (libc::RLIMIT_AS, limits.max_memory_bytes),
        (libc::RLIMIT_FSIZE, limits.max_file_bytes),
        (libc::RLIMIT_CORE, 0),
    ] {
        let mut own = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: getrlimit fills the struct it is given.
        unsafe { libc::getrlimit(resource, &mut own) };
        let value = (value as libc::rlim_t).min(own.rlim_max);
        let lim = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        // SAFETY: a plain syscall on our own unreaped child, with a valid pointer to a limit.
        if unsafe { libc::prlimit(pid, resource, &lim, std::ptr::null_mut()) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// The program to run for Verilator's analysis-only modes (`--lint-only`, `--xml-only`):
/// `verilator_bin` itself where it can be found as Verilator's `verilator` script finds it, else the
/// script. The script is Perl; for these modes it only raises the stack limit and runs
/// `verilator_bin` with the same arguments, and starting Perl cost 40 ms of a 50 ms lint (measured:
/// 43% of all CPU time in a VerilogEval `df.verify`, against 4% in `verilator_bin`). Builds
/// (`--binary`) still go through the script.
fn verilator_front_end() -> &'static str {
    static FRONT_END: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    FRONT_END.get_or_init(|| {
        let script = which::which("verilator").ok();
        locate_verilator_bin(
            std::env::var_os("VERILATOR_ROOT").as_deref(),
            std::env::var_os("VERILATOR_BIN").as_deref(),
            script.as_deref(),
        )
        .and_then(|p| p.into_os_string().into_string().ok())
        .unwrap_or_else(|| "verilator".into())
    })
}

/// The program and limits that run Verilator's analysis modes: `verilator_bin` when
/// `verilator_front_end` found it, with the stack limit the script gives it; else the script.
pub fn verilator_command(limits: Limits) -> (&'static str, Limits) {
    match verilator_front_end() {
        "verilator" => ("verilator", limits),
        front_end => (
            front_end,
            Limits {
                unlimited_stack: true,
                ..limits
            },
        ),
    }
}

/// Held while a tool is spawned. A child inherits rtlab's resource limits at its spawn and its exec
/// fixes its stack limit (the kernel pins it during the exec and writes it back at the end, over a
/// `prlimit` that lands in between: a test that tried that failed one run in two). So a tool that
/// needs an unlimited stack is spawned while rtlab's own soft limit is raised, under this lock, and
/// every other tool is spawned under it too, so that none inherits the raised limit. The lock is
/// held for the spawn only (microseconds: posix_spawn returns once the child has exec'd), not while
/// tools run. rtlab's other spawners (sbatch, `pip download`) do not take it: one that starts in
/// those microseconds gets the raised stack limit, which changes nothing for it. This replaced a `sh -c 'ulimit -s unlimited; exec ...'` around each lint: one process
/// start (about a millisecond) less for every row verified.
static SPAWN_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Spawns `cmd`, with the stack limit raised to the hard limit when `unlimited_stack` (what
/// `ulimit -s unlimited` gives where the hard limit allows it, and nothing otherwise).
fn spawn(cmd: &mut Command, unlimited_stack: bool) -> std::io::Result<std::process::Child> {
    let _held = SPAWN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if !unlimited_stack {
        return cmd.spawn();
    }
    let mut own = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_STACK, &mut own) } != 0
        || own.rlim_max != libc::RLIM_INFINITY
        || own.rlim_cur == libc::RLIM_INFINITY
    {
        return cmd.spawn();
    }
    let raised = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: own.rlim_max,
    };
    // SAFETY: plain syscalls on this process's own limit, with valid pointers. Raising the soft
    // limit up to the hard one needs no privilege; lowering it back always succeeds.
    unsafe {
        libc::setrlimit(libc::RLIMIT_STACK, &raised);
        let child = cmd.spawn();
        libc::setrlimit(libc::RLIMIT_STACK, &own);
        child
    }
}

/// Where Verilator's `verilator` script would run `verilator_bin` from (its `verilator_bin` sub):
/// `$VERILATOR_BIN` names the binary (default `verilator_bin`); under `$VERILATOR_ROOT` it is
/// `bin/NAME` or `NAME`; otherwise it sits beside the script's real path (symlinks resolved). `None`
/// when that file is not an executable: the caller runs the script, which decides.
fn locate_verilator_bin(
    root: Option<&std::ffi::OsStr>,
    bin_name: Option<&std::ffi::OsStr>,
    script: Option<&Path>,
) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let name = bin_name
        .filter(|n| !n.is_empty())
        .unwrap_or("verilator_bin".as_ref());
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let candidate = match root.filter(|r| !r.is_empty()) {
        Some(root) => {
            let installed = Path::new(root).join("bin").join(name);
            if executable(&installed) {
                installed
            } else {
                Path::new(root).join(name)
            }
        }
        None => std::fs::canonicalize(script?).ok()?.parent()?.join(name),
    };
    executable(&candidate).then_some(candidate)
}

/// Runs `program args` in `dir` under `limits`. Never panics; a missing tool is `NotStarted`.
pub fn run_tool(program: &str, args: &[&str], dir: &Path, limits: Limits) -> Outcome {
    let start = Instant::now();
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that a timeout kills everything the tool started.
        .process_group(0);
    if dir.is_absolute() {
        // What a tool makes for itself (iverilog's preprocessed text and its compiler's settings,
        // g++'s assembly) goes in the row's scratch directory, on its filesystem, and goes with it.
        cmd.env("TMPDIR", dir);
    }
    // Nothing runs in the child before exec: with a `pre_exec` closure std forks rtlab's whole
    // address space for every tool (page tables of gigabytes when a dataset or a model is loaded,
    // then a copy-on-write fault on every page rtlab's threads write next); without one it uses
    // posix_spawn (vfork + exec), whose cost does not grow with rtlab's memory. The limits go on
    // the tool from here the moment it exists, microseconds after its exec. SIGXFSZ needs no reset:
    // rtlab catches it (never ignores it), so every exec starts with the default, which kills a tool
    // past its file limit.
    let mut child = match spawn(&mut cmd, limits.unlimited_stack) {
        Ok(c) => c,
        Err(e) => {
            return Outcome {
                ended: Ended::NotStarted(format!("{program}: {e}")),
                output: String::new(),
                elapsed: start.elapsed(),
            }
        }
    };
    let pgid = child.id() as i32;
    if let Err(e) = set_limits(pgid, limits) {
        kill_group(pgid);
        let _ = child.wait();
        return Outcome {
            ended: Ended::NotStarted(format!("{program}: cannot set its limits: {e}")),
            output: String::new(),
            elapsed: start.elapsed(),
        };
    }
    let (chunks, readers) = read_streams(&mut child);
    let (outputs, stopped) = collect_output(&chunks, pgid, start, limits);
    let status = child.wait();
    // The group may hold grandchildren (vvp under a shell, say): make sure none outlives us.
    kill_group(pgid);
    for r in readers {
        let _ = r.join();
    }
    let ended = stopped.unwrap_or_else(|| match status {
        Ok(s) => match s.code() {
            Some(code) => Ended::Exited(code),
            None => Ended::Signaled,
        },
        Err(e) => Ended::NotStarted(e.to_string()),
    });
    let mut output = String::from_utf8_lossy(&outputs[0]).to_string();
    output.push_str(&String::from_utf8_lossy(&outputs[1]));
    Outcome {
        ended,
        output,
        elapsed: start.elapsed(),
    }
}

/// A chunk of a child's output: 0 for stdout, 1 for stderr.
type Chunk = (usize, Vec<u8>);

/// One thread per output stream, sending chunks as they come; the channel closes when both end.
fn read_streams(
    child: &mut std::process::Child,
) -> (
    std::sync::mpsc::Receiver<Chunk>,
    Vec<std::thread::JoinHandle<()>>,
) {
    let (tx, rx) = std::sync::mpsc::channel::<Chunk>();
    let streams = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ];
    let mut readers = Vec::new();
    for (idx, stream) in streams.into_iter().enumerate() {
        let Some(mut s) = stream else { continue };
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            let mut buf = [0u8; 16384];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send((idx, buf[..n].to_vec())).is_err() {
                            break;
                        }
                    }
                }
            }
        }));
    }
    (rx, readers)
}

/// Keeps up to `max_output` bytes of stdout and stderr until both close, killing the process group
/// when it prints too much, runs past its timeout or Ctrl-C is pressed (and saying which).
fn collect_output(
    chunks: &std::sync::mpsc::Receiver<Chunk>,
    pgid: i32,
    start: Instant,
    limits: Limits,
) -> ([Vec<u8>; 2], Option<Ended>) {
    let mut outputs = [Vec::new(), Vec::new()];
    let mut total = 0usize;
    let mut ended = None;
    loop {
        match chunks.recv_timeout(Duration::from_millis(10)) {
            Ok((idx, chunk)) => {
                total += chunk.len();
                let keep = limits
                    .max_output
                    .saturating_sub(outputs[0].len() + outputs[1].len());
                outputs[idx].extend_from_slice(&chunk[..chunk.len().min(keep)]);
                if total > limits.max_output && ended.is_none() {
                    ended = Some(Ended::OutputLimit);
                    kill_group(pgid);
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if ended.is_none() {
            if start.elapsed() > limits.timeout {
                ended = Some(Ended::TimedOut);
                kill_group(pgid);
            } else if rtlab_core::cancel_requested() {
                ended = Some(Ended::Cancelled);
                kill_group(pgid);
            }
        }
    }
    (outputs, ended)
}

fn kill_group(pgid: i32) {
    // SAFETY: plain syscall; a group that is already gone returns ESRCH, which we ignore.
    unsafe {
        libc::killpg(pgid, libc::SIGKILL);
    }
}

/// The lines of a tool's output that mention one of `needles` (lowercase), trimmed: at most 20
/// lines of 300 characters, enough to say what went wrong without carrying a flood.
pub fn lines_matching(output: &str, needles: &[&str]) -> Vec<String> {
    output
        .lines()
        .map(str::trim)
        .filter(|l| needles.iter().any(|n| l.to_lowercase().contains(n)))
        .map(|l| l.chars().take(300).collect())
        .take(20)
        .collect()
}

/// The first line of `program --version`-style output, if the tool runs. It goes through
/// [`run_tool`] like every other tool call: own process group, rlimits, a 10 s timeout.
pub fn tool_version(program: &str, args: &[&str]) -> Option<String> {
    let limits = Limits {
        timeout: Duration::from_secs(10),
        max_output: 64 << 10,
        ..Limits::default()
    };
    // In the directory the rows' scratch directories go in: where the verifier's tools will run.
    let out = run_tool(program, args, crate::scratch::scratch_root(), limits);
    // Some tools print their version and exit non-zero (`iverilog -V` without a file does); a tool
    // that did not start, hung or was killed has no version.
    match out.ended {
        Ended::Exited(_) => {}
        _ => return None,
    }
    out.output
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn touch(path: &Path, mode: u32) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn verilator_bin_is_found_where_verilators_script_looks_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let kit = dir.path().join("kit");
        // A distribution's layout: the script and the binary side by side, the script reached
        // through a symlink elsewhere on PATH (the script resolves its real path: FindBin's $RealBin).
        touch(&kit.join("bin/verilator"), 0o755);
        touch(&kit.join("bin/verilator_bin"), 0o755);
        let on_path = dir.path().join("path/verilator");
        std::fs::create_dir_all(on_path.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(kit.join("bin/verilator"), &on_path).unwrap();
        let beside = std::fs::canonicalize(kit.join("bin/verilator_bin")).unwrap();
        assert_eq!(
            locate_verilator_bin(None, None, Some(&on_path)),
            Some(beside.clone())
        );
        // $VERILATOR_ROOT wins over the script's place: `bin/NAME` when installed there, else `NAME`.
        let root = dir.path().join("root");
        touch(&root.join("verilator_bin"), 0o755);
        assert_eq!(
            locate_verilator_bin(Some(root.as_os_str()), None, Some(&on_path)),
            Some(root.join("verilator_bin"))
        );
        touch(&root.join("bin/verilator_bin"), 0o755);
        assert_eq!(
            locate_verilator_bin(Some(root.as_os_str()), None, Some(&on_path)),
            Some(root.join("bin/verilator_bin"))
        );
        // $VERILATOR_BIN names another binary (the script's debug build, say).
        touch(&kit.join("bin/verilator_bin_dbg"), 0o755);
        assert_eq!(
            locate_verilator_bin(None, Some("verilator_bin_dbg".as_ref()), Some(&on_path)),
            Some(beside.with_file_name("verilator_bin_dbg"))
        );
        // Not there, or not executable: None, and the caller runs the script, which decides.
        assert_eq!(
            locate_verilator_bin(None, Some("missing_bin".as_ref()), Some(&on_path)),
            None
        );
        touch(&kit.join("bin/verilator_bin"), 0o644);
        assert_eq!(locate_verilator_bin(None, None, Some(&on_path)), None);
        assert_eq!(locate_verilator_bin(None, None, None), None);
    }

    /// rtlab's own stack limit, read under the spawn lock: other tests in this binary spawn
    /// Verilator with the limit raised for a moment (reading it outside the lock failed one run of
    /// seven).
    fn own_stack_limit() -> libc::rlimit {
        let _held = SPAWN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let mut own = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit fills the struct it is given.
        unsafe { libc::getrlimit(libc::RLIMIT_STACK, &mut own) };
        own
    }

    #[test]
    fn an_unlimited_stack_is_given_as_verilators_script_gives_it_and_to_no_other_tool() {
        let own = own_stack_limit();
        // `ulimit -s unlimited` succeeds when the hard limit allows it, and changes nothing otherwise.
        let soft = |limit: libc::rlim_t| match limit {
            libc::RLIM_INFINITY => "unlimited".to_string(),
            kib => (kib / 1024).to_string(),
        };
        let raised = match own.rlim_max {
            libc::RLIM_INFINITY => "unlimited".to_string(),
            _ => soft(own.rlim_cur),
        };
        let stack_of = |unlimited_stack| {
            let limits = Limits {
                unlimited_stack,
                ..Limits::default()
            };
            let out = run_tool("sh", &["-c", "ulimit -s"], &std::env::temp_dir(), limits);
            out.output.trim().to_string()
        };
        // Tools spawned from many threads at once, some with the raised limit and some without:
        // each gets its own, and rtlab's own limit is what it was.
        std::thread::scope(|scope| {
            let runs: Vec<_> = (0..16)
                .map(|i| scope.spawn(move || (i % 2 == 0, stack_of(i % 2 == 0))))
                .collect();
            for run in runs {
                let (unlimited, got) = run.join().unwrap();
                let expected = if unlimited {
                    &raised
                } else {
                    &soft(own.rlim_cur)
                };
                assert_eq!(&got, expected, "unlimited_stack: {unlimited}");
            }
        });
        let after = own_stack_limit();
        assert_eq!(
            (after.rlim_cur, after.rlim_max),
            (own.rlim_cur, own.rlim_max)
        );
    }

    /// Verilator's lint through `verilator_bin` directly and through Verilator's script: the same
    /// exit status and the same text, for clean designs, warnings and errors. Needs verilator
    /// (installed by .ci/run); without it this fails.
    #[test]
    fn verilator_bin_run_directly_lints_exactly_as_verilators_script() {
        let front_end = verilator_front_end();
        assert!(
            front_end.ends_with("verilator_bin"),
            "verilator_bin was not found beside the `verilator` script ({front_end}): install verilator (apt-get install -y verilator)"
        );
        let designs = [
            "module clean(input a, output y); assign y = a; endmodule\n",
            // UNUSEDSIGNAL, WIDTH and UNDRIVEN warnings.
            "module warns(input [3:0] a, input b, output [1:0] y, output z); assign y = a; endmodule\n",
            // An error: an undeclared identifier.
            "module broken(input a, output y); assign y = nope; endmodule\n",
            // A syntax error.
            "module bad(input a output y); endmodule\n",
        ];
        let dir = tempfile::tempdir().unwrap();
        for design in designs {
            std::fs::write(dir.path().join("design.sv"), design).unwrap();
            let args = [
                "--lint-only",
                "-Wall",
                "-Wno-fatal",
                "-Wno-DECLFILENAME",
                "--no-timing",
                "design.sv",
            ];
            let (program, limits) = verilator_command(Limits::default());
            let direct = run_tool(program, &args, dir.path(), limits);
            let script = run_tool("verilator", &args, dir.path(), Limits::default());
            assert_eq!(direct.ended, script.ended, "{design}");
            assert_eq!(direct.output, script.output, "{design}");
            assert!(!direct.output.is_empty() || design.starts_with("module clean"));
        }
    }

    #[test]
    fn a_tools_temporary_files_go_in_its_working_directory() {
        let dir = tempfile::tempdir().unwrap();
        let out = run_tool(
            "sh",
            &["-c", "printf %s \"$TMPDIR\"; mktemp"],
            dir.path(),
            Limits::default(),
        );
        assert!(out.ok(), "{out:?}");
        let (tmpdir, made) = out.output.split_at(dir.path().as_os_str().len());
        assert_eq!(Path::new(tmpdir), dir.path());
        assert!(
            Path::new(made.trim()).starts_with(dir.path()),
            "mktemp made {made}"
        );
    }
}
