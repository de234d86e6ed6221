//! `sweep` runs each trial once: killed mid-sweep (SIGKILL, in the middle of a training trial), a
//! rerun keeps the finished trials and runs only the rest; bad search spaces are refused up front.

use crate::common::{err, rtlab, Run};
use std::path::Path;
use std::time::{Duration, Instant};

/// A grid of four training trials on the tiny model; the trial with lr 3e-2 hangs when the
/// environment says so (after saying so in a marker file), so that the test can kill the process
/// inside it. The hang is not in the script's text: the resumed run runs the same code.
fn sweep_script(dir: &Path, objective: &str) -> String {
    format!(
        r#"create_tiny_model("{dir}/tiny", #{{seed: 1}});
        let rows = [];
        for g in ["and", "or", "xor", "nand", "nor", "xnor"] {{
            rows.push(#{{instruction: "Write " + g, output: "module " + g + "2(input a, b, output y); endmodule"}});
        }}
        let data = from_records(rows);
        let s = sweep(#{{params: #{{lr: [1e-3, 1e-2, 3e-2, 1e-1]}}, objective: "best_eval_loss", out: "{dir}/sweep",
            trial: |p| {{
                write_text(`{dir}/started-${{p.lr}}`, "");
                if env("SWEEP_TEST_HANG") == "1" && p.lr == 3e-2 {{ sleep(60); }}
                let run = train_lora(#{{base: "{dir}/tiny", data: data.head(4), eval_data: data.tail(2),
                    out: `{dir}/runs/lr-${{p.lr}}`, lr: p.lr, r: 4, epochs: 2, batch_size: 2, grad_accum: 1}});
                #{{best_eval_loss: {objective}}}
            }}}});
        print(s.trials.column("cached"));
        print(s.trials.len());
        print(s.best.lr == s.trials.sort("best_eval_loss").row(0).lr);"#,
        dir = dir.display()
    )
}

fn run_script(dir: &Path, code: &str, hang: bool) -> std::process::Child {
    let script = dir.join("sweep.rhai");
    std::fs::write(&script, code).unwrap();
    rtlab()
        .env("SWEEP_TEST_HANG", if hang { "1" } else { "0" })
        .arg("run")
        .arg("--no-cache")
        .arg(&script)
        .env("RTLAB_HOME", dir.join(".rtlab"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn a_sweep_killed_inside_a_trial_resumes_with_the_finished_trials_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let objective = "run.best_eval_loss";
    let mut child = run_script(dir, &sweep_script(dir, objective), true);
    let started = Instant::now();
    while !dir.join("started-0.03").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the third trial never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    let kept = std::fs::read_dir(dir.join("sweep"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("trial-")
        })
        .count();
    assert_eq!(kept, 2, "the two finished trials are on disk");
    std::fs::remove_file(dir.join("started-0.001")).unwrap();

    let resumed = Run::from(
        run_script(dir, &sweep_script(dir, objective), false)
            .wait_with_output()
            .unwrap(),
    );
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    let (summary, rest) = resumed.stdout.split_once('\n').unwrap();
    assert!(
        summary.starts_with("sweep: 4 trials (2 run, 2 kept from "),
        "{}",
        resumed.stdout
    );
    assert_eq!(
        rest, "[true, true, false, false]\n4\ntrue\n",
        "{}",
        resumed.stdout
    );
    assert!(
        !dir.join("started-0.001").exists(),
        "a finished trial does not run again"
    );
    assert!(dir.join("sweep/sweep.svg").exists());

    // An edited trial function is other code: its trials run again, and the run says why.
    let edited = Run::from(
        run_script(dir, &sweep_script(dir, "run.best_eval_loss * 1.0"), false)
            .wait_with_output()
            .unwrap(),
    );
    assert_eq!(edited.code, 0, "{}", edited.stderr);
    assert!(
        edited.stdout.contains(
            "sweep: trial 0 ran with other code (rtlab or the script's functions changed): running it again"
        ),
        "{}",
        edited.stdout
    );
    assert!(
        edited
            .stdout
            .contains("[false, false, false, false]\n4\ntrue\n"),
        "{}",
        edited.stdout
    );
}

#[test]
fn search_spaces_that_cannot_be_searched_are_refused_before_any_trial() {
    let e =
        err(r#"sweep(#{params: #{lr: []}, objective: "l", out: "/tmp/x", trial: |p| #{l: 1}})"#);
    assert!(e.contains("sweep: params.lr is an empty array"), "{e}");
    let e = err(
        r#"sweep(#{params: #{lr: #{low: 1e-4, high: 1e-2, log: true}}, objective: "l", out: "/tmp/x", trial: |p| #{l: 1}})"#,
    );
    assert!(e.contains("a range, which a grid cannot enumerate"), "{e}");
    let e = err(
        r#"sweep(#{params: #{lr: [1]}, strategy: "random", objective: "l", out: "/tmp/x", trial: |p| #{l: 1}})"#,
    );
    assert!(e.contains("a random search needs trials"), "{e}");
    let e = err(
        r#"sweep(#{params: #{lr: [1]}, strategy: "bayes", objective: "l", out: "/tmp/x", trial: |p| #{l: 1}})"#,
    );
    assert!(e.contains("strategy \"bayes\""), "{e}");
    let e = err(
        r#"sweep(#{params: #{lr: #{low: 0, high: 1, log: true}}, strategy: "random", trials: 2, objective: "l", out: "/tmp/x", trial: |p| #{l: 1}})"#,
    );
    assert!(e.contains("low > 0 (log scale)"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let e = err(&format!(
        r#"sweep(#{{params: #{{lr: [1, 2]}}, objective: "loss", out: "{}", trial: |p| #{{accuracy: 1}}}})"#,
        dir.path().display()
    ));
    assert!(
        e.contains("trial 0 returned") && e.contains("no finite number `loss`"),
        "{e}"
    );
}
