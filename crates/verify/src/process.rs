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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(30),
            max_output: 1 << 20,
            max_memory_bytes: 4 << 30,
            max_file_bytes: 64 << 20,
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
    // Nothing runs in the child before exec: with a `pre_exec` closure std forks rtlab's whole
    // address space for every tool (page tables of gigabytes when a dataset or a model is loaded,
    // then a copy-on-write fault on every page rtlab's threads write next); without one it uses
    // posix_spawn (vfork + exec), whose cost does not grow with rtlab's memory. The limits go on
    // the tool from here the moment it exists, microseconds after its exec. SIGXFSZ needs no reset:
    // rtlab catches it (never ignores it), so every exec starts with the default, which kills a tool
    // past its file limit.
    let mut child = match cmd.spawn() {
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

/// The first line of `program --version`-style output, if the tool runs. It goes through
/// [`run_tool`] like every other tool call: own process group, rlimits, a 10 s timeout.
pub fn tool_version(program: &str, args: &[&str]) -> Option<String> {
    let limits = Limits {
        timeout: Duration::from_secs(10),
        max_output: 64 << 10,
        ..Limits::default()
    };
    let out = run_tool(program, args, &std::env::temp_dir(), limits);
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
