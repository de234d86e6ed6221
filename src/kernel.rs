//! `rtlab kernel`: rtlab as a Jupyter kernel, for JupyterLab, VS Code's notebooks, Quarto and
//! nbclient. The wire protocol is `jupyter-protocol`'s messages on `jupyter-zmq-client`'s sockets
//! (HMAC-SHA256 signed, verified on every message read; the pure-Rust `zeromq`, no libzmq).
//!
//! Two threads. The sockets live on a tokio runtime (heartbeat, control, shell, iopub, stdin); the
//! session (one [`Runtime`] and one scope, as in the REPL) lives on the main thread, because a Rhai
//! engine is not `Send`. Shell requests go to the session through a channel; replies and outputs come
//! back through another. Control is answered on the socket thread, so an `interrupt_request` lands
//! while a cell runs: it sets the stdlib's cancel flag (what Ctrl-C sets in the REPL), Rhai's progress
//! hook stops the script at its next step, child tools are killed by their runner, and every
//! variable defined before stays.
//!
//! Invariant: every shell request gets `busy`, then its reply, then `idle`, all with the request as
//! parent, and what the process wrote on stderr while it ran goes out as its output before that
//! `idle` ([`StderrFlush`]); a message with a bad signature is refused (logged on the kernel's
//! stderr) and never reaches the session.

use crate::engine::{display_value, render_error, HelpIndex, Runtime};
use crate::repl::{is_incomplete, ReplHelper};
use jupyter_protocol::{
    CodeMirrorMode, CommInfoReply, CompleteReply, ConnectionInfo, DisplayData, ErrorOutput,
    ExecuteInput, ExecuteReply, ExecuteResult, ExecutionCount, HelpLink, HistoryReply,
    InspectReply, InterruptReply, IsCompleteReply, IsCompleteReplyStatus, JupyterMessage,
    JupyterMessageContent, KernelInfoReply, LanguageInfo, Media, MediaType, ReplyError,
    ReplyStatus, ShutdownReply, Status, StreamContent,
};
use jupyter_zmq_client::{
    create_kernel_control_connection, create_kernel_heartbeat_connection,
    create_kernel_iopub_xpub_connection, create_kernel_shell_connection,
    create_kernel_stdin_connection, RuntimeError, SubscriptionEvent,
};
use rhai::{Dynamic, Scope, AST};
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

/// What the socket thread hands the session.
enum ToSession {
    /// A shell request, with when it came off the socket (a request queued behind a failed cell
    /// is one that came before the failure was answered).
    Shell(Box<JupyterMessage>, std::time::Instant),
    Shutdown,
}

/// What the session hands the socket thread to send.
enum ToWire {
    Shell(Box<JupyterMessage>),
    IoPub(Box<JupyterMessage>),
}

type WireSender = tokio::sync::mpsc::UnboundedSender<ToWire>;

/// The request being handled, shared with the stderr reader so that warnings written while a cell
/// runs reach that cell's output.
type CurrentParent = Arc<Mutex<Option<JupyterMessage>>>;

/// Why the kernel could not start, or its kernelspec could not be installed or removed. Once the
/// kernel runs, a cell's error is a reply to the client, never one of these.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The connection file Jupyter wrote is missing, unreadable or asks for what rtlab cannot do.
    #[error("{0}")]
    Connection(String),
    /// The sockets could not be bound (a port in use) or their thread could not start.
    #[error("{0}")]
    Sockets(String),
    /// Where kernelspecs go could not be found, or the kernelspec could not be written or removed.
    #[error("{0}")]
    Kernelspec(String),
    /// The kernel's stderr could not be redirected to the client.
    #[error("{0}")]
    Stderr(#[from] std::io::Error),
}

/// Runs the kernel described by `connection_file` until a `shutdown_request`.
pub fn run(connection_file: &Path) -> Result<(), KernelError> {
    let shown = connection_file.display().to_string();
    let text = std::fs::read_to_string(connection_file).map_err(|e| {
        KernelError::Connection(format!("cannot read the connection file {shown}: {e}"))
    })?;
    let info: ConnectionInfo = serde_json::from_str(&text).map_err(|e| {
        KernelError::Connection(format!("{shown} is not a Jupyter connection file (ip, transport, the five ports, key, signature_scheme): {e}"))
    })?;
    if !info.key.is_empty() && info.signature_scheme != "hmac-sha256" {
        return Err(KernelError::Connection(format!(
            "{shown}: signature_scheme {:?} is not supported; rtlab signs with hmac-sha256",
            info.signature_scheme
        )));
    }
    let (to_session, from_wire) = std::sync::mpsc::channel::<ToSession>();
    let (to_wire, from_session) = tokio::sync::mpsc::unbounded_channel::<ToWire>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), KernelError>>();
    let parent: CurrentParent = Arc::new(Mutex::new(None));
    std::thread::spawn(move || {
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = ready_tx.send(Err(KernelError::Sockets(format!(
                    "cannot start the socket thread: {e}"
                ))));
                return;
            }
        };
        runtime.block_on(serve(info, to_session, from_session, ready_tx));
    });
    ready_rx
        .recv()
        .map_err(|_| KernelError::Sockets("the socket thread ended before binding".to_string()))?
        .map_err(|e| KernelError::Sockets(format!("{shown}: {e}")))?;
    // A SIGINT (a client in signal mode, a terminal) interrupts the cell, as a message does.
    crate::engine::install_ctrl_c_handler();
    let stderr_flush = match forward_stderr(to_wire.clone(), parent.clone()) {
        Ok(flush) => Some(flush),
        Err(e) => {
            eprintln!("rtlab kernel: warnings stay on the kernel's stderr: {e}");
            None
        }
    };
    let mut session = Session::new(to_wire, parent, stderr_flush);
    // When a cell last failed with `stop_on_error` (Run All): the execute requests queued behind it,
    // those that arrived before its failure was answered, are aborted, as ipykernel does (its
    // `stop_on_error_timeout` is 0), not run on a state the failure left half made. A request that
    // arrived after the answer runs, however late this thread gets to it on a busy machine.
    let mut failed_at: Option<std::time::Instant> = None;
    while let Ok(msg) = from_wire.recv() {
        let ToSession::Shell(m, arrived) = msg else {
            break;
        };
        let queued_behind_a_failure = failed_at.is_some_and(|t| arrived < t);
        if queued_behind_a_failure && matches!(m.content, JupyterMessageContent::ExecuteRequest(_))
        {
            session.abort(&m);
        } else if session.handle(&m) {
            failed_at = session.last_reply.get();
        }
    }
    Ok(())
}

/// Binds every socket (a port that is taken fails here, before the session starts), then serves
/// them until the session ends.
async fn serve(
    info: ConnectionInfo,
    to_session: std::sync::mpsc::Sender<ToSession>,
    mut from_session: tokio::sync::mpsc::UnboundedReceiver<ToWire>,
    ready: std::sync::mpsc::Sender<Result<(), KernelError>>,
) {
    let session_id = uuid::Uuid::new_v4().to_string();
    let bound = async {
        Ok::<_, RuntimeError>((
            create_kernel_heartbeat_connection(&info).await?,
            create_kernel_shell_connection(&info, &session_id).await?,
            create_kernel_control_connection(&info, &session_id).await?,
            create_kernel_stdin_connection(&info, &session_id).await?,
            create_kernel_iopub_xpub_connection(&info, &session_id).await?,
        ))
    }
    .await;
    let (mut heartbeat, shell, mut control, _stdin, mut iopub) = match bound {
        Ok(sockets) => sockets,
        Err(e) => {
            let _ = ready.send(Err(KernelError::Sockets(format!(
                "cannot bind the kernel's sockets on {} (ports shell {}, iopub {}, stdin {}, control {}, heartbeat {}): {e}; is another kernel using them?",
                info.ip, info.shell_port, info.iopub_port, info.stdin_port, info.control_port, info.hb_port
            ))));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let (mut shell_out, mut shell_in) = shell.split();

    tokio::spawn(async move { while heartbeat.single_heartbeat().await.is_ok() {} });

    let control_to_session = to_session.clone();
    tokio::spawn(async move {
        loop {
            let message = match control.read().await {
                Ok(m) => m,
                Err(e) if is_socket_gone(&e) => break,
                Err(e) => {
                    eprintln!("rtlab kernel: refused a control message: {e}");
                    continue;
                }
            };
            let reply = match &message.content {
                JupyterMessageContent::KernelInfoRequest(_) => {
                    Some(kernel_info().as_child_of(&message))
                }
                JupyterMessageContent::InterruptRequest(_) => {
                    rtlab_core::request_cancel();
                    Some(InterruptReply::new().as_child_of(&message))
                }
                JupyterMessageContent::ShutdownRequest(req) => {
                    let reply = ShutdownReply {
                        restart: req.restart,
                        status: ReplyStatus::Ok,
                        error: None,
                    }
                    .as_child_of(&message);
                    let _ = control.send(reply).await;
                    // A running cell stops; then the session ends.
                    rtlab_core::request_cancel();
                    let _ = control_to_session.send(ToSession::Shutdown);
                    break;
                }
                _ => None,
            };
            if let Some(reply) = reply {
                let _ = control.send(reply).await;
            }
        }
    });

    tokio::spawn(async move {
        loop {
            match shell_in.read().await {
                Ok(m) => {
                    if to_session
                        .send(ToSession::Shell(Box::new(m), std::time::Instant::now()))
                        .is_err()
                    {
                        break;
                    }
                }
                Err(e) if is_socket_gone(&e) => break,
                // A bad signature, a malformed message: refused and logged, the kernel goes on.
                Err(e) => eprintln!("rtlab kernel: refused a shell message: {e}"),
            }
        }
    });

    loop {
        tokio::select! {
            out = from_session.recv() => match out {
                Some(ToWire::Shell(m)) => { let _ = shell_out.send(*m).await; }
                Some(ToWire::IoPub(m)) => { let _ = iopub.send(*m).await; }
                None => break,
            },
            sub = iopub.recv_subscription() => {
                // JEP 65: a new subscriber learns that iopub is live.
                if let Ok(SubscriptionEvent::Subscribe(topic)) = sub {
                    let _ = iopub.send(jupyter_protocol::IoPubWelcome::new(topic).into()).await;
                }
            }
        }
    }
}

/// Whether a read error means the socket is closed (stop reading), not a bad message (go on).
fn is_socket_gone(e: &RuntimeError) -> bool {
    matches!(e, RuntimeError::ZmqError(_) | RuntimeError::IoError(_))
}

fn kernel_info() -> KernelInfoReply {
    KernelInfoReply {
        status: ReplyStatus::Ok,
        protocol_version: "5.3".to_string(),
        implementation: "rtlab".to_string(),
        implementation_version: env!("CARGO_PKG_VERSION").to_string(),
        language_info: LanguageInfo {
            name: "rhai".to_string(),
            version: "1".to_string(),
            mimetype: Some("text/x-rhai".to_string()),
            file_extension: Some(".rhai".to_string()),
            // Rhai reads like Rust to a highlighter.
            pygments_lexer: Some("rust".to_string()),
            codemirror_mode: Some(CodeMirrorMode::Simple("rust".to_string())),
            nbconvert_exporter: None,
        },
        banner: format!(
            "rtlab {} (Rhai): datasets, Verilog verification, models and training in one notebook",
            env!("CARGO_PKG_VERSION")
        ),
        help_links: vec![HelpLink {
            text: "rtlab book".to_string(),
            url: "https://github.com/rtlab/rtlab/tree/main/book/src".to_string(),
        }],
        debugger: false,
        error: None,
    }
}

/// One notebook's session: the REPL's rules (one scope; functions and closures of a cell are there
/// in the next), paths relative to the notebook's directory (Jupyter starts a kernel there).
struct Session {
    rt: Runtime,
    scope: Scope<'static>,
    functions: AST,
    help: HelpIndex,
    completer: ReplHelper,
    variables: Rc<RefCell<Vec<(String, String)>>>,
    count: usize,
    out: WireSender,
    parent: CurrentParent,
    /// When the last shell reply went out: a failed cell's requests queued behind it are those that
    /// arrived before its reply.
    last_reply: std::cell::Cell<Option<std::time::Instant>>,
    /// Waits until what a request wrote on stderr has gone out as its output (None: stderr is not
    /// forwarded).
    stderr_flush: Option<StderrFlush>,
}

impl Session {
    fn new(out: WireSender, parent: CurrentParent, stderr_flush: Option<StderrFlush>) -> Session {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        let rt = Runtime::new(&cwd);
        // Lines go to the notebook as they are printed, not to the kernel's stdout.
        rt.sink.set_quiet(true);
        let (line_out, line_parent) = (out.clone(), parent.clone());
        rt.sink.set_listener(Some(Rc::new(move |line: &str| {
            if let Some(p) = line_parent
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
            {
                let text = format!("{line}\n");
                let _ = line_out.send(ToWire::IoPub(Box::new(
                    StreamContent::stdout(&text).as_child_of(p),
                )));
            }
        })));
        let (display_out, display_parent) = (out.clone(), parent.clone());
        rt.sink.set_display(Some(Rc::new(move |value: &Dynamic| {
            if let Some(p) = display_parent
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
            {
                let _ = display_out.send(ToWire::IoPub(Box::new(
                    DisplayData::new(media_of(value)).as_child_of(p),
                )));
            }
        })));
        let help = rt.help_index();
        let variables = Rc::new(RefCell::new(Vec::new()));
        let completer = ReplHelper::new(
            help.names().map(str::to_string).collect(),
            help.methods(),
            variables.clone(),
        );
        Session {
            rt,
            scope: Scope::new(),
            functions: AST::empty(),
            help,
            completer,
            variables,
            count: 0,
            out,
            parent,
            last_reply: std::cell::Cell::new(None),
            stderr_flush,
        }
    }

    fn iopub(&self, m: JupyterMessage) {
        let _ = self.out.send(ToWire::IoPub(Box::new(m)));
    }

    fn reply(&self, m: JupyterMessage) {
        self.last_reply.set(Some(std::time::Instant::now()));
        let _ = self.out.send(ToWire::Shell(Box::new(m)));
    }

    /// An execute request queued behind a failed cell: busy, an `aborted` reply, idle.
    fn abort(&mut self, request: &JupyterMessage) {
        self.iopub(Status::busy().as_child_of(request));
        self.reply(
            ExecuteReply {
                status: ReplyStatus::Aborted,
                execution_count: ExecutionCount::new(self.count),
                payload: vec![],
                user_expressions: Some(Default::default()),
                error: None,
            }
            .as_child_of(request),
        );
        self.iopub(Status::idle().as_child_of(request));
    }

    /// One shell request: busy, the reply (and outputs), idle. True when it was a cell that failed
    /// and asked to stop on error.
    fn handle(&mut self, request: &JupyterMessage) -> bool {
        let mut stop = false;
        *self.parent.lock().unwrap_or_else(|e| e.into_inner()) = Some(request.clone());
        self.iopub(Status::busy().as_child_of(request));
        match &request.content {
            JupyterMessageContent::KernelInfoRequest(_) => {
                self.reply(kernel_info().as_child_of(request))
            }
            JupyterMessageContent::ExecuteRequest(req) => {
                let ok = self.execute(request, &req.code, req.silent, req.store_history);
                stop = !ok && req.stop_on_error;
            }
            JupyterMessageContent::CompleteRequest(req) => {
                let reply = self.complete(&req.code, req.cursor_pos);
                self.reply(reply.as_child_of(request))
            }
            JupyterMessageContent::InspectRequest(req) => {
                let reply = self.inspect(&req.code, req.cursor_pos);
                self.reply(reply.as_child_of(request))
            }
            JupyterMessageContent::IsCompleteRequest(req) => {
                let status = if is_incomplete(&req.code) {
                    IsCompleteReplyStatus::Incomplete
                } else {
                    IsCompleteReplyStatus::Complete
                };
                let indent = if status == IsCompleteReplyStatus::Incomplete {
                    "    "
                } else {
                    ""
                };
                self.reply(
                    IsCompleteReply {
                        status,
                        indent: indent.to_string(),
                    }
                    .as_child_of(request),
                )
            }
            JupyterMessageContent::HistoryRequest(_) => self.reply(
                HistoryReply {
                    history: vec![],
                    status: ReplyStatus::Ok,
                    error: None,
                }
                .as_child_of(request),
            ),
            JupyterMessageContent::CommInfoRequest(_) => self.reply(
                CommInfoReply {
                    status: ReplyStatus::Ok,
                    comms: Default::default(),
                    error: None,
                }
                .as_child_of(request),
            ),
            other => {
                // An unknown request gets an error reply of its kind, never silence or a crash.
                let kind = other.message_type().to_string();
                let reply_type = kind
                    .strip_suffix("_request")
                    .map(|k| format!("{k}_reply"))
                    .unwrap_or_else(|| format!("{kind}_reply"));
                let content = serde_json::json!({
                    "status": "error",
                    "ename": "UnknownRequest",
                    "evalue": format!("rtlab's kernel does not handle {kind}"),
                    "traceback": [],
                });
                if let Ok(content) =
                    JupyterMessageContent::from_type_and_content(&reply_type, content)
                {
                    self.reply(JupyterMessage::new(content, Some(request)));
                }
            }
        }
        // A cell's last warnings may still be in the stderr pipe: they go out before `idle`, which
        // tells the client that the cell's output is complete.
        if let Some(flush) = &mut self.stderr_flush {
            flush.wait();
        }
        self.iopub(Status::idle().as_child_of(request));
        *self.parent.lock().unwrap_or_else(|e| e.into_inner()) = None;
        stop
    }

    /// Runs a cell; false when it failed.
    fn execute(&mut self, request: &JupyterMessage, code: &str, silent: bool, store: bool) -> bool {
        if store && !silent {
            self.count += 1;
        }
        let count = ExecutionCount::new(self.count);
        if !silent {
            self.iopub(
                ExecuteInput {
                    code: code.to_string(),
                    execution_count: count,
                }
                .as_child_of(request),
            );
        }
        let origin = format!("cell[{}]", self.count);
        let result = self.eval_keeping_functions(&origin, code);
        self.rt.sink.take_capture();
        self.refresh_variables();
        match result {
            Ok(value) => {
                if !value.is_unit() && !silent {
                    self.iopub(
                        ExecuteResult {
                            execution_count: count,
                            data: media_of(&value),
                            metadata: Default::default(),
                            // The message spec wants an object here, never null.
                            transient: Some(Default::default()),
                        }
                        .as_child_of(request),
                    );
                }
                self.reply(
                    ExecuteReply {
                        status: ReplyStatus::Ok,
                        execution_count: count,
                        payload: vec![],
                        user_expressions: Some(Default::default()),
                        error: None,
                    }
                    .as_child_of(request),
                );
                true
            }
            Err(e) => {
                let (ename, evalue) = if e.cancelled {
                    (
                        "Interrupted".to_string(),
                        "interrupted; every variable defined before is kept".to_string(),
                    )
                } else {
                    ("ScriptError".to_string(), e.message.clone())
                };
                let traceback = vec![render_error(&e)];
                self.iopub(
                    ErrorOutput {
                        ename: ename.clone(),
                        evalue: evalue.clone(),
                        traceback: traceback.clone(),
                    }
                    .as_child_of(request),
                );
                self.reply(
                    ExecuteReply {
                        status: ReplyStatus::Error,
                        execution_count: count,
                        payload: vec![],
                        user_expressions: Some(Default::default()),
                        error: Some(Box::new(ReplyError {
                            ename,
                            evalue,
                            traceback,
                        })),
                    }
                    .as_child_of(request),
                );
                false
            }
        }
    }

    /// The REPL's rule: the cell runs with the functions of every earlier cell, and keeps its own. A
    /// panic inside a stdlib function is an error of this cell, not the kernel's end.
    fn eval_keeping_functions(
        &mut self,
        origin: &str,
        code: &str,
    ) -> Result<Dynamic, crate::ScriptError> {
        let ast = self.rt.compile(origin, code)?;
        let combined = self.functions.merge(&ast);
        let (rt, scope) = (&self.rt, &mut self.scope);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rt.eval(origin, code, scope, &combined)
        }));
        self.functions = self.functions.merge(&ast.clone_functions_only());
        match outcome {
            Ok(result) => result,
            Err(panic) => {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic".to_string());
                Err(crate::ScriptError::plain(
                    origin,
                    format!("rtlab failed inside a stdlib function ({why}); the kernel and its variables are intact, please report this"),
                ))
            }
        }
    }

    fn refresh_variables(&self) {
        *self.variables.borrow_mut() = crate::repl::variables_in(&self.scope, &self.rt.engine);
    }

    /// What the REPL's Tab gives, with Jupyter's cursor positions in Unicode code points.
    fn complete(&self, code: &str, cursor_pos: usize) -> CompleteReply {
        let byte = byte_offset(code, cursor_pos);
        let (start, pairs) = self.completer.code_completions(&code[..byte]);
        CompleteReply {
            matches: pairs.into_iter().map(|p| p.replacement).collect(),
            cursor_start: code[..start].chars().count(),
            cursor_end: cursor_pos,
            metadata: Default::default(),
            status: ReplyStatus::Ok,
            error: None,
        }
    }

    /// `:help NAME` for the name under (or just before) the cursor.
    fn inspect(&self, code: &str, cursor_pos: usize) -> InspectReply {
        let byte = byte_offset(code, cursor_pos);
        let is_word = |c: char| c.is_alphanumeric() || c == '_';
        let start = code[..byte]
            .char_indices()
            .rev()
            .take_while(|(_, c)| is_word(*c))
            .last()
            .map_or(byte, |(i, _)| i);
        let end = code[byte..]
            .char_indices()
            .find(|(_, c)| !is_word(*c))
            .map_or(code.len(), |(i, _)| byte + i);
        let name = &code[start..end];
        match self.help.render(name) {
            Some(text) => InspectReply {
                found: true,
                data: Media::new(vec![MediaType::Plain(text)]),
                metadata: Default::default(),
                status: ReplyStatus::Ok,
                error: None,
            },
            None => InspectReply {
                found: false,
                data: Media::default(),
                metadata: Default::default(),
                status: ReplyStatus::Ok,
                error: None,
            },
        }
    }
}

/// The byte offset of code point `pos` in `code` (Jupyter counts code points).
fn byte_offset(code: &str, pos: usize) -> usize {
    code.char_indices().nth(pos).map_or(code.len(), |(i, _)| i)
}

/// A value as a MIME bundle, always with `text/plain`: a DataFrame adds the report's HTML table, a
/// plot its SVG, anything else the report's HTML (a map as a `<pre>`).
fn media_of(value: &Dynamic) -> Media {
    let plain = MediaType::Plain(display_value(value));
    let rich = rtlab_core::values::rich_type_of(value);
    let mut content = vec![plain];
    match rich.map(|r| r.tag) {
        Some("plot") => {
            let html = rtlab_core::display::value_html(value);
            let svg = html
                .find("<svg")
                .and_then(|start| html.rfind("</svg>").map(|end| &html[start..end + 6]))
                .unwrap_or(&html)
                .to_string();
            content.push(MediaType::Svg(svg));
        }
        // A map (a benchmark's summary, a training run): a two-column table of its entries.
        _ if value.is_map() => {
            let map = value.clone().cast::<rhai::Map>();
            let rows: String = map
                .iter()
                .map(|(k, v)| {
                    format!(
                        "<tr><th style=\"text-align:left\">{}</th><td><pre style=\"margin:0\">{}</pre></td></tr>",
                        rtlab_core::display::escape_html(k),
                        rtlab_core::display::escape_html(&display_value(v))
                    )
                })
                .collect();
            content.push(MediaType::Html(format!("<table>{rows}</table>")));
        }
        _ => content.push(MediaType::Html(rtlab_core::display::value_html(value))),
    }
    Media::new(content)
}

/// Starts a line [`forward_stderr`]'s reader takes as "everything before me is sent", never as
/// output: an escape character no warning begins with, then a name.
const STDERR_FLUSH_MARK: &str = "\u{1b}rtlab-stderr-flush ";

/// The session's end of the stderr reader: [`StderrFlush::wait`] returns once every line written on
/// stderr before it has gone to the client. The pipe keeps order, so a marker written now reaches the
/// reader after them; the reader answers with the marker's number.
struct StderrFlush {
    /// Where the marks are written: the process's stderr (the pipe's writing end).
    marks: Box<dyn std::io::Write + Send>,
    answered: std::sync::mpsc::Receiver<u64>,
    asked: u64,
}

impl StderrFlush {
    /// How long a flush waits for the reader (a stuck reader must not hang the kernel).
    const PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

    fn wait(&mut self) {
        use std::io::Write;
        self.asked += 1;
        let mark = format!("{STDERR_FLUSH_MARK}{}\n", self.asked);
        if self.marks.write_all(mark.as_bytes()).is_err() || self.marks.flush().is_err() {
            return;
        }
        let deadline = std::time::Instant::now() + Self::PATIENCE;
        while let Ok(n) = self
            .answered
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
        {
            if n >= self.asked {
                return;
            }
        }
    }
}

/// Sends what the process writes on stderr (the stdlib's warnings and summaries) to the cell that
/// is running, as its `stderr` stream, and still to the kernel's own stderr (Jupyter's log). Lines
/// of long work's progress (`progress: ...`) update one display in place instead of piling up.
fn forward_stderr(out: WireSender, parent: CurrentParent) -> Result<StderrFlush, std::io::Error> {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe fills two descriptors it opens; dup/dup2 only duplicate descriptors we own.
    let original = unsafe {
        if libc::pipe(fds.as_mut_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let original = libc::dup(2);
        if original < 0 || libc::dup2(fds[1], 2) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        libc::close(fds[1]);
        original
    };
    // SAFETY: both descriptors are ours alone from here on.
    let (reader, mut log) = unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(original),
        )
    };
    let (answer, answered) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut progress: Option<(String, String)> = None;
        forward_lines(reader, answer, |line| {
            forward_line(line, &mut log, &parent, &out, &mut progress)
        });
    });
    Ok(StderrFlush {
        marks: Box::new(std::io::stderr()),
        answered,
        asked: 0,
    })
}

/// The stderr reader's loop: each line to `forward`, and each flush mark's number to `answer` once
/// every line before it has been forwarded (a mark appended to an unfinished line forwards that
/// line's text first).
fn forward_lines(
    reader: impl std::io::Read,
    answer: std::sync::mpsc::Sender<u64>,
    mut forward: impl FnMut(&str),
) {
    use std::io::BufRead;
    for line in std::io::BufReader::new(reader).lines() {
        let Ok(mut line) = line else { break };
        let mut flushed = None;
        if let Some(at) = line.find(STDERR_FLUSH_MARK) {
            flushed = line[at + STDERR_FLUSH_MARK.len()..]
                .trim()
                .parse::<u64>()
                .ok();
            line.truncate(at);
        }
        if !line.is_empty() || flushed.is_none() {
            forward(&line);
        }
        if let Some(n) = flushed {
            let _ = answer.send(n);
        }
    }
}

/// One line of stderr to the kernel's log and, while a request runs, to its client (see
/// [`forward_stderr`]).
fn forward_line(
    line: &str,
    log: &mut std::fs::File,
    parent: &CurrentParent,
    out: &WireSender,
    progress: &mut Option<(String, String)>,
) {
    use std::io::Write;
    let _ = writeln!(log, "{line}");
    let guard = parent.lock().unwrap_or_else(|e| e.into_inner());
    let Some(p) = guard.as_ref() else { return };
    let message = if let Some(rest) = line.strip_prefix("progress: ") {
        let data = Media::new(vec![MediaType::Plain(rest.to_string())]);
        let msg_id = p.header.msg_id.clone();
        match &*progress {
            Some((for_msg, id)) if *for_msg == msg_id => {
                let mut d = DisplayData::new(data);
                d.transient = Some(jupyter_protocol::Transient {
                    display_id: Some(id.clone()),
                });
                jupyter_protocol::UpdateDisplayData {
                    data: d.data,
                    metadata: d.metadata,
                    transient: d.transient.unwrap_or_default(),
                }
                .as_child_of(p)
            }
            _ => {
                let id = format!("rtlab-progress-{msg_id}");
                *progress = Some((msg_id, id.clone()));
                let mut d = DisplayData::new(data);
                d.transient = Some(jupyter_protocol::Transient {
                    display_id: Some(id),
                });
                d.as_child_of(p)
            }
        }
    } else {
        StreamContent::stderr(&format!("{line}\n")).as_child_of(p)
    };
    let _ = out.send(ToWire::IoPub(Box::new(message)));
}

/// Where `rtlab kernel install` writes the kernelspec.
#[derive(Debug, Clone)]
pub enum InstallPlace {
    /// The user's Jupyter data directory (`~/.local/share/jupyter`).
    User,
    /// `PREFIX/share/jupyter`, as `jupyter kernelspec install --prefix` lays it out.
    Prefix(PathBuf),
    /// The `share/jupyter` of the Python environment `python3` runs in (a virtualenv, conda).
    SysPrefix,
}

/// The `kernels/` directory of a place.
fn kernels_dir(place: &InstallPlace) -> Result<PathBuf, KernelError> {
    Ok(match place {
        InstallPlace::User => jupyter_zmq_client::dirs::user_data_dir()
            .map_err(|e| {
                KernelError::Kernelspec(format!(
                    "cannot find the user's Jupyter data directory: {e}"
                ))
            })?
            .join("kernels"),
        InstallPlace::Prefix(p) => std::path::absolute(p)
            .unwrap_or_else(|_| p.clone())
            .join("share/jupyter/kernels"),
        InstallPlace::SysPrefix => {
            let out = std::process::Command::new("python3")
                .args(["-c", "import sys; print(sys.prefix)"])
                .output()
                .map_err(|e| {
                    KernelError::Kernelspec(format!(
                        "--sys-prefix asks python3 for its prefix, but it cannot run: {e}"
                    ))
                })?;
            let prefix = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if !out.status.success() || prefix.is_empty() {
                return Err(KernelError::Kernelspec(
                    "--sys-prefix: python3 did not print its sys.prefix".into(),
                ));
            }
            PathBuf::from(prefix).join("share/jupyter/kernels")
        }
    })
}

/// The logo JupyterLab shows in its launcher.
const LOGO_SVG: &str = r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 64 64"><rect width="64" height="64" rx="10" fill="#2d6a4f"/><path d="M14 46V18h12a8 8 0 0 1 0 16h-12M26 34l10 12M40 18v28h12" fill="none" stroke="#fff" stroke-width="5" stroke-linecap="round" stroke-linejoin="round"/></svg>"##;

/// Writes the `rtlab` kernelspec (`kernel.json` and a logo) and returns its directory.
pub fn install(place: &InstallPlace) -> Result<PathBuf, KernelError> {
    let exe = std::env::current_exe()
        .and_then(std::fs::canonicalize)
        .map_err(|e| {
            KernelError::Kernelspec(format!(
                "cannot find rtlab's own path for the kernelspec: {e}"
            ))
        })?;
    let dir = kernels_dir(place)?.join("rtlab");
    std::fs::create_dir_all(&dir)
        .map_err(|e| KernelError::Kernelspec(format!("cannot create {}: {e}", dir.display())))?;
    let spec = serde_json::json!({
        "argv": [exe.display().to_string(), "kernel", "-f", "{connection_file}"],
        "display_name": "rtlab (Rhai)",
        "language": "rhai",
        "interrupt_mode": "message",
        "metadata": {"debugger": false},
    });
    let write = |name: &str, text: &str| {
        rtlab_core::workspace::write_atomic(&dir.join(name), text.as_bytes()).map_err(|e| {
            KernelError::Kernelspec(format!("cannot write {}: {e}", dir.join(name).display()))
        })
    };
    write(
        "kernel.json",
        &(serde_json::to_string_pretty(&spec).unwrap_or_default() + "\n"),
    )?;
    write("logo-svg.svg", LOGO_SVG)?;
    Ok(dir)
}

/// Removes the `rtlab` kernelspec from a place; returns the directory removed, or None if absent.
pub fn uninstall(place: &InstallPlace) -> Result<Option<PathBuf>, KernelError> {
    let dir = kernels_dir(place)?.join("rtlab");
    if !dir.exists() {
        return Ok(None);
    }
    std::fs::remove_dir_all(&dir)
        .map_err(|e| KernelError::Kernelspec(format!("cannot remove {}: {e}", dir.display())))?;
    Ok(Some(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `wait` returns only once every line written before it has been forwarded, however slow the
    /// forwarding; a line a mark was appended to is forwarded whole, and the mark never is.
    #[test]
    fn a_flush_waits_for_every_line_written_before_it() {
        let (reader, writer) = std::io::pipe().unwrap();
        let (answer, answered) = std::sync::mpsc::channel();
        let forwarded = Arc::new(Mutex::new(Vec::<String>::new()));
        let seen = forwarded.clone();
        let reading = std::thread::spawn(move || {
            forward_lines(reader, answer, |line| {
                // A busy machine: the forwarding thread runs late.
                std::thread::sleep(std::time::Duration::from_millis(30));
                seen.lock().unwrap().push(line.to_string());
            })
        });
        let mut flush = StderrFlush {
            marks: Box::new(writer.try_clone().unwrap()),
            answered,
            asked: 0,
        };
        let mut cell = writer;
        use std::io::Write;
        write!(cell, "verify: 1 rows\nwarning: one\nunfinished").unwrap();
        flush.wait();
        assert_eq!(
            *forwarded.lock().unwrap(),
            ["verify: 1 rows", "warning: one", "unfinished"]
        );
        writeln!(cell, "next cell").unwrap();
        flush.wait();
        assert_eq!(forwarded.lock().unwrap().last().unwrap(), "next cell");
        drop((cell, flush));
        reading.join().unwrap();
    }
}
