//! `rtlab kernel` driven as Jupyter drives it: the real binary on a connection file, a client on real
//! sockets (`jupyter-zmq-client`'s client side, HMAC-signed), no mocks.

use crate::common::*;
use jupyter_protocol::{
    CompleteRequest, ConnectionInfo, ExecuteRequest, InspectRequest, InterruptRequest,
    IsCompleteReplyStatus, IsCompleteRequest, JupyterMessage, JupyterMessageContent,
    KernelInfoRequest, MediaType, ReplyStatus, ShutdownRequest, Transport,
};
use jupyter_zmq_client::{
    create_client_control_connection, create_client_heartbeat_connection,
    create_client_iopub_connection, create_client_shell_connection_with_identity,
    peer_identity_for_session, wait_for_iopub_welcome, ClientControlConnection,
    ClientIoPubConnection, ClientShellConnection,
};
use std::path::Path;
use std::time::{Duration, Instant};

/// Five ports free now (bound, read, released).
fn free_ports() -> Vec<u16> {
    let listeners: Vec<_> = (0..5)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

fn connection_info(key: &str) -> ConnectionInfo {
    let p = free_ports();
    ConnectionInfo {
        ip: "127.0.0.1".into(),
        transport: Transport::TCP,
        shell_port: p[0],
        iopub_port: p[1],
        stdin_port: p[2],
        control_port: p[3],
        hb_port: p[4],
        key: key.into(),
        signature_scheme: "hmac-sha256".into(),
        kernel_name: Some("rtlab".into()),
    }
}

fn start_kernel(dir: &Path, info: &ConnectionInfo) -> std::process::Child {
    let file = dir.join("connection.json");
    std::fs::write(&file, serde_json::to_string(info).unwrap()).unwrap();
    rtlab()
        .current_dir(dir)
        .env("RTLAB_HOME", dir.join(".rtlab"))
        .args(["kernel", "-f"])
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

struct Client {
    shell: ClientShellConnection,
    iopub: ClientIoPubConnection,
    control: ClientControlConnection,
}

/// What one request brought: its reply and the iopub messages it caused, up to `idle`.
struct Answer {
    reply: JupyterMessageContent,
    outputs: Vec<JupyterMessageContent>,
    statuses: Vec<String>,
}

impl Answer {
    fn text(&self, mime: &str) -> Option<String> {
        self.outputs.iter().find_map(|o| {
            let data = match o {
                JupyterMessageContent::ExecuteResult(r) => &r.data,
                JupyterMessageContent::DisplayData(d) => &d.data,
                _ => return None,
            };
            data.content.iter().find_map(|m| match (m, mime) {
                (MediaType::Plain(t), "text/plain")
                | (MediaType::Html(t), "text/html")
                | (MediaType::Svg(t), "image/svg+xml") => Some(t.clone()),
                _ => None,
            })
        })
    }

    fn stdout(&self) -> String {
        self.outputs
            .iter()
            .filter_map(|o| match o {
                JupyterMessageContent::StreamContent(s) => Some(s.text.clone()),
                _ => None,
            })
            .collect()
    }
}

impl Client {
    async fn connect(info: &ConnectionInfo) -> Client {
        let session = uuid::Uuid::new_v4().to_string();
        let deadline = Instant::now() + Duration::from_secs(20);
        // The kernel binds its sockets after it starts: try until it answers.
        let mut iopub = create_client_iopub_connection(info, "", &session)
            .await
            .unwrap();
        let shell = create_client_shell_connection_with_identity(
            info,
            &session,
            peer_identity_for_session(&session).unwrap(),
        )
        .await
        .unwrap();
        let control = create_client_control_connection(info, &session)
            .await
            .unwrap();
        while wait_for_iopub_welcome(&mut iopub, Duration::from_millis(500))
            .await
            .unwrap_or(None)
            .is_none()
        {
            assert!(Instant::now() < deadline, "the kernel never welcomed iopub");
        }
        Client {
            shell,
            iopub,
            control,
        }
    }

    async fn request(&mut self, content: impl Into<JupyterMessage>) -> Answer {
        let request: JupyterMessage = content.into();
        let id = request.header.msg_id.clone();
        self.shell.send(request).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(60), self.shell.read())
            .await
            .expect("a reply within 60 s")
            .unwrap();
        assert_eq!(reply.parent_header.as_ref().unwrap().msg_id, id);
        let (outputs, statuses) = self.outputs_of(&id).await;
        Answer {
            reply: reply.content,
            outputs,
            statuses,
        }
    }

    /// The iopub messages whose parent is `id`, until its `idle`.
    async fn outputs_of(&mut self, id: &str) -> (Vec<JupyterMessageContent>, Vec<String>) {
        let (mut outputs, mut statuses) = (Vec::new(), Vec::new());
        loop {
            let m = tokio::time::timeout(Duration::from_secs(60), self.iopub.read())
                .await
                .expect("iopub within 60 s")
                .unwrap();
            if m.parent_header.as_ref().map(|h| h.msg_id.as_str()) != Some(id) {
                continue;
            }
            if let JupyterMessageContent::Status(s) = &m.content {
                let state = format!("{:?}", s.execution_state).to_lowercase();
                statuses.push(state.clone());
                if state == "idle" {
                    return (outputs, statuses);
                }
                continue;
            }
            outputs.push(m.content);
        }
    }

    async fn execute(&mut self, code: &str) -> Answer {
        self.request(ExecuteRequest::new(code.to_string())).await
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_notebook_session_over_real_sockets() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rows.jsonl"),
        "{\"task\": \"mux\", \"ok\": true}\n{\"task\": \"fsm\", \"ok\": false}\n",
    )
    .unwrap();
    let info = connection_info(&uuid::Uuid::new_v4().to_string());
    let mut kernel = start_kernel(dir.path(), &info);
    runtime().block_on(async {
        let mut hb = create_client_heartbeat_connection(&info).await.unwrap();
        let mut c = Client::connect(&info).await;
        tokio::time::timeout(Duration::from_secs(5), hb.single_heartbeat())
            .await
            .expect("the heartbeat answers")
            .unwrap();

        let a = c.request(KernelInfoRequest {}).await;
        let JupyterMessageContent::KernelInfoReply(info_reply) = &a.reply else {
            panic!("{:?}", a.reply)
        };
        assert_eq!(info_reply.language_info.name, "rhai");
        assert_eq!(a.statuses, ["busy", "idle"]);

        // One scope across cells: a variable and a function of one cell are there in the next.
        let a = c
            .execute("let x = 41; fn twice(v) { v * 2 } print(`x is ${x}`);")
            .await;
        assert!(matches!(&a.reply, JupyterMessageContent::ExecuteReply(r) if r.status == ReplyStatus::Ok));
        assert_eq!(a.stdout(), "x is 41\n");
        let a = c.execute("twice(x + 1) / 2").await;
        assert_eq!(a.text("text/plain").as_deref(), Some("42"));

        // A DataFrame read relative to the notebook's directory: an HTML table and its text.
        let a = c.execute("load_jsonl(\"rows.jsonl\")").await;
        let html = a.text("text/html").expect("a frame has text/html");
        assert!(html.contains("<table") && html.contains("fsm"), "{html}");
        assert!(a.text("text/plain").unwrap().contains("shape: (2, 2)"));

        // A plot as SVG.
        let a = c
            .execute("plot_line(from_records([#{x: 1, y: 2}, #{x: 2, y: 3}]), \"x\", \"y\")")
            .await;
        let svg = a.text("image/svg+xml").expect("a plot has image/svg+xml");
        assert!(svg.starts_with("<svg"), "{svg}");

        // A map (a benchmark summary, a run) is a table of its entries.
        let a = c.execute("#{pass_at_1: 0.25, model: \"sft\"}").await;
        let html = a.text("text/html").unwrap();
        assert!(html.contains("<th style=\"text-align:left\">pass_at_1</th>"), "{html}");

        // display() sends a value mid-cell.
        let a = c.execute("display(#{a: 1}); 5").await;
        assert_eq!(
            a.outputs
                .iter()
                .filter(|o| matches!(o, JupyterMessageContent::DisplayData(_)))
                .count(),
            1
        );

        // An error: the CLI's file:line:col message and caret, as an error reply.
        let a = c.execute("let y = 1;\nnot_a_function(y)").await;
        let JupyterMessageContent::ExecuteReply(r) = &a.reply else {
            panic!()
        };
        assert_eq!(r.status, ReplyStatus::Error);
        let error = a
            .outputs
            .iter()
            .find_map(|o| match o {
                JupyterMessageContent::ErrorOutput(e) => Some(e.clone()),
                _ => None,
            })
            .expect("an error output");
        assert!(
            error.traceback[0].contains("cell[")
                && error.traceback[0].contains(":2:1: no function `not_a_function`"),
            "{:?}",
            error.traceback
        );

        // Completion, with a multibyte character before the cursor (positions in code points).
        let code = "let é = 1; x.pr";
        let a = c
            .request(CompleteRequest {
                code: code.into(),
                cursor_pos: code.chars().count(),
            })
            .await;
        let JupyterMessageContent::CompleteReply(r) = &a.reply else {
            panic!()
        };
        assert_eq!(r.cursor_start, code.chars().count() - 2, "{r:?}");
        assert!(r.matches.iter().any(|m| m == "print"), "{:?}", r.matches);
        // Method-aware, as the REPL's Tab: a frame in scope gets frame methods only.
        c.execute("let df = load_jsonl(\"rows.jsonl\");").await;
        let code = "df.fil";
        let a = c
            .request(CompleteRequest {
                code: code.into(),
                cursor_pos: code.chars().count(),
            })
            .await;
        let JupyterMessageContent::CompleteReply(r) = &a.reply else {
            panic!()
        };
        assert!(r.matches.iter().any(|m| m == "filter"), "{:?}", r.matches);
        assert!(!r.matches.iter().any(|m| m == "file_exists"), "{:?}", r.matches);

        // Inspect gives :help's text; is_complete follows open brackets.
        let a = c
            .request(InspectRequest {
                code: "load_jsonl".into(),
                cursor_pos: 4,
                detail_level: Some(0),
            })
            .await;
        let JupyterMessageContent::InspectReply(r) = &a.reply else {
            panic!()
        };
        assert!(r.found);
        for (code, want) in [
            ("let a = [1, 2,", IsCompleteReplyStatus::Incomplete),
            ("let a = [1, 2];", IsCompleteReplyStatus::Complete),
        ] {
            let a = c.request(IsCompleteRequest { code: code.into() }).await;
            let JupyterMessageContent::IsCompleteReply(r) = &a.reply else {
                panic!()
            };
            assert_eq!(r.status, want, "{code}");
        }

        // Progress of long work updates one display in place: no flood of stream lines.
        let a = c
            .execute(
                r#"create_tiny_model("tiny", #{seed: 1});
let rows = [];
for g in ["and", "or", "xor", "nand"] { rows.push(#{instruction: "Write " + g, output: "module " + g + "2(input a, b, output y); endmodule"}); }
let run = train_lora(#{base: "tiny", data: from_records(rows), out: "run", r: 4, epochs: 10, batch_size: 1, grad_accum: 1});
run.steps"#,
            )
            .await;
        let result = a.outputs.iter().find_map(|o| match o {
            JupyterMessageContent::ExecuteResult(r) => Some(format!("{:?}", r.data)),
            _ => None,
        });
        assert!(result.is_some_and(|r| r.contains("Plain(\"40\")")), "{:?}", a.outputs);
        let display_ids: Vec<String> = a
            .outputs
            .iter()
            .filter_map(|o| match o {
                JupyterMessageContent::DisplayData(d) => {
                    d.transient.as_ref().and_then(|t| t.display_id.clone())
                }
                JupyterMessageContent::UpdateDisplayData(u) => u.transient.display_id.clone(),
                _ => None,
            })
            .collect();
        assert!(display_ids.len() >= 2, "{:?}", a.outputs);
        assert!(
            display_ids.iter().all(|id| *id == display_ids[0]),
            "one display, updated: {display_ids:?}"
        );
        assert!(
            !a.stdout().contains("progress:"),
            "progress lines came as a stream: {}",
            a.stdout()
        );

        // Run All after an error: a cell that fails with stop_on_error aborts the ones queued
        // behind it, which never run.
        // The failing cell takes a moment, so the next is queued behind it when it fails.
        let failing: JupyterMessage =
            ExecuteRequest::new("sleep(0.5); throw \"boom\"".to_string()).into();
        let queued: JupyterMessage = ExecuteRequest::new("let after = 1;".to_string()).into();
        let (failing_id, queued_id) = (failing.header.msg_id.clone(), queued.header.msg_id.clone());
        c.shell.send(failing).await.unwrap();
        c.shell.send(queued).await.unwrap();
        let mut statuses = std::collections::BTreeMap::new();
        for _ in 0..2 {
            let reply = tokio::time::timeout(Duration::from_secs(30), c.shell.read())
                .await
                .unwrap()
                .unwrap();
            let JupyterMessageContent::ExecuteReply(r) = &reply.content else {
                panic!("{:?}", reply.content)
            };
            statuses.insert(reply.parent_header.unwrap().msg_id, r.status.clone());
        }
        assert_eq!(statuses[&failing_id], ReplyStatus::Error);
        assert_eq!(statuses[&queued_id], ReplyStatus::Aborted);
        c.outputs_of(&failing_id).await;
        c.outputs_of(&queued_id).await;
        let a = c.execute("after").await;
        assert!(
            matches!(&a.reply, JupyterMessageContent::ExecuteReply(r) if r.status == ReplyStatus::Error),
            "an aborted cell ran"
        );

        // A request the kernel does not know gets an error reply of its kind, and the kernel goes on.
        let unknown = JupyterMessage::new(
            JupyterMessageContent::UnknownMessage(jupyter_protocol::UnknownMessage {
                msg_type: "frobnicate_request".into(),
                content: serde_json::json!({}),
            }),
            None,
        );
        let a = c.request(unknown).await;
        assert_eq!(a.reply.message_type(), "frobnicate_reply");
        let reply_json = serde_json::to_value(&a.reply).unwrap();
        assert_eq!(reply_json["status"], "error", "{reply_json}");
        assert_eq!(a.statuses, ["busy", "idle"]);

        // Interrupt keeps state: `loop {}` stops within a second, `x` is still 41.
        let looping: JupyterMessage = ExecuteRequest::new("loop {}".to_string()).into();
        let looping_id = looping.header.msg_id.clone();
        c.shell.send(looping).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let asked = Instant::now();
        c.control
            .send(InterruptRequest {}.into())
            .await
            .unwrap();
        let interrupted = tokio::time::timeout(Duration::from_secs(10), c.shell.read())
            .await
            .expect("the loop was interrupted")
            .unwrap();
        let stopped_in = asked.elapsed();
        assert_eq!(
            interrupted.parent_header.as_ref().unwrap().msg_id,
            looping_id
        );
        let JupyterMessageContent::ExecuteReply(r) = &interrupted.content else {
            panic!()
        };
        assert_eq!(r.status, ReplyStatus::Error);
        assert!(stopped_in < Duration::from_secs(1), "{stopped_in:?}");
        let (_, _) = c.outputs_of(&looping_id).await;
        let _ = c.control.read().await;
        let a = c.execute("x").await;
        assert_eq!(a.text("text/plain").as_deref(), Some("41"));

        // Shutdown: a reply, then the process ends.
        c.control
            .send(
                ShutdownRequest { restart: false }.into(),
            )
            .await
            .unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(10), c.control.read())
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(reply.content, JupyterMessageContent::ShutdownReply(_)));
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = kernel.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the kernel did not exit after shutdown"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_message_signed_with_another_key_is_refused_and_the_kernel_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let info = connection_info("the-right-key");
    let mut kernel = start_kernel(dir.path(), &info);
    runtime().block_on(async {
        let mut good = Client::connect(&info).await;
        let mut forged_info = info.clone();
        forged_info.key = "a-wrong-key".into();
        let session = uuid::Uuid::new_v4().to_string();
        let mut forged = create_client_shell_connection_with_identity(
            &forged_info,
            &session,
            peer_identity_for_session(&session).unwrap(),
        )
        .await
        .unwrap();
        forged
            .send(ExecuteRequest::new("let stolen = 1;".to_string()).into())
            .await
            .unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(800), forged.read())
                .await
                .is_err(),
            "a forged request was answered"
        );
        let a = good.execute("1 + 1").await;
        assert_eq!(a.text("text/plain").as_deref(), Some("2"));
        let a = good.execute("stolen").await;
        assert!(matches!(&a.reply, JupyterMessageContent::ExecuteReply(r) if r.status == ReplyStatus::Error));
    });
    kernel.kill().unwrap();
    let out = kernel.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refused a shell message"), "{stderr}");
}

#[test]
fn bad_connection_files_are_clear_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let r = run_in(dir.path(), &["kernel", "-f", "missing.json"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("cannot read the connection file missing.json"),
        "{}",
        r.stderr
    );
    std::fs::write(dir.path().join("bad.json"), "{not json").unwrap();
    let r = run_in(dir.path(), &["kernel", "-f", "bad.json"]);
    assert!(
        r.stderr
            .contains("bad.json is not a Jupyter connection file"),
        "{}",
        r.stderr
    );
    // A port another process holds.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut info = connection_info("k");
    info.shell_port = taken.local_addr().unwrap().port();
    std::fs::write(
        dir.path().join("taken.json"),
        serde_json::to_string(&info).unwrap(),
    )
    .unwrap();
    let r = run_in(dir.path(), &["kernel", "-f", "taken.json"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("taken.json: cannot bind the kernel's sockets")
            && r.stderr.contains(&format!("shell {}", info.shell_port)),
        "{}",
        r.stderr
    );
    let r = run_in(dir.path(), &["kernel"]);
    assert!(r.stderr.contains("rtlab kernel install"), "{}", r.stderr);
}

#[test]
fn install_writes_a_kernelspec_that_starts_this_rtlab() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("env");
    let r = run_in(
        dir.path(),
        &["kernel", "install", "--prefix", prefix.to_str().unwrap()],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let spec_dir = prefix.join("share/jupyter/kernels/rtlab");
    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(spec_dir.join("kernel.json")).unwrap())
            .unwrap();
    let exe = std::fs::canonicalize(env!("CARGO_BIN_EXE_rtlab")).unwrap();
    assert_eq!(
        spec["argv"],
        serde_json::json!([
            exe.display().to_string(),
            "kernel",
            "-f",
            "{connection_file}"
        ])
    );
    assert_eq!(spec["display_name"], "rtlab (Rhai)");
    assert_eq!(spec["language"], "rhai");
    assert_eq!(spec["interrupt_mode"], "message");
    assert!(spec_dir.join("logo-svg.svg").is_file());
    let r = run_in(
        dir.path(),
        &["kernel", "uninstall", "--prefix", prefix.to_str().unwrap()],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!spec_dir.exists());
}

/// The real Jupyter stack: `jupyter_kernel_test`'s conformance suite, `jupyter execute` (nbclient) on
/// the committed scripts/jupyter_tour.ipynb, and nbformat's validation of what `rtlab report -o
/// x.ipynb` writes (tests/python/jupyter_conformance.py). `.ci/run` installs the packages; without
/// them this fails saying what to install.
#[test]
fn the_real_jupyter_stack_accepts_the_kernel_and_its_notebooks() {
    let out = std::process::Command::new("python3")
        .arg(repo_root().join("tests/python/jupyter_conformance.py"))
        .arg(env!("CARGO_BIN_EXE_rtlab"))
        .arg(repo_root())
        .output()
        .expect("python3 runs");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("ModuleNotFoundError"),
        "the Jupyter conformance test needs `python3 -m pip install jupyter_client jupyter_kernel_test nbclient nbformat` (.ci/run installs them):\n{text}"
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("OK"), "{text}");
    assert!(
        text.contains("jupyter execute: scripts/jupyter_tour.ipynb ran"),
        "{text}"
    );
    assert!(
        text.contains(".rhai -> .ipynb -> .rhai keeps the code"),
        "{text}"
    );
}
