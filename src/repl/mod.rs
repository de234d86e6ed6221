//! The REPL: one persistent scope, rustyline editing (history across restarts, completion,
//! highlighting, multi-line input), `:commands` in one `match`, Ctrl-C cancelling an evaluation.

mod helper;

pub(crate) use helper::ReplHelper;
pub use helper::{is_incomplete, COMMANDS};

use crate::engine::{
    display_value, install_ctrl_c_handler, render_error, script_type_name, HelpIndex, Runtime,
};
use crate::notebook::{status_line, Notebook, NotebookOptions};
use rhai::{Dynamic, Scope, AST};
use rustyline::error::ReadlineError;
use rustyline::history::FileHistory;
use rustyline::{Config, Editor};
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

/// The variables in `scope` with their types, sorted, for completion: later entries shadow earlier
/// ones of the same name, so the last is kept. The REPL and the Jupyter kernel complete from it.
pub(crate) fn variables_in(scope: &Scope<'static>, engine: &rhai::Engine) -> Vec<(String, String)> {
    let mut names: Vec<(String, String)> = Vec::new();
    for (n, _, v) in scope.iter_raw() {
        names.retain(|(m, _)| m != n);
        names.push((n.to_string(), script_type_name(engine, v)));
    }
    names.sort();
    names
}

/// Where history lives: `$XDG_DATA_HOME/rtlab/history` (`~/.local/share/rtlab/history`).
pub fn history_path() -> Option<PathBuf> {
    dirs::data_dir().map(|d| d.join("rtlab").join("history"))
}

pub struct Repl {
    rt: Runtime,
    scope: Scope<'static>,
    /// The functions defined so far (`fn` items and the closures behind `|x| ...` values): each entry
    /// is its own AST, so they are carried into every later one, as the scope carries variables.
    functions: AST,
    help: HelpIndex,
    variables: Rc<RefCell<Vec<(String, String)>>>,
    last_notebook: Option<Notebook>,
    opts: NotebookOptions,
}

impl Repl {
    pub fn new(opts: NotebookOptions) -> Repl {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        let rt = Runtime::new(&cwd);
        let help = rt.help_index();
        Repl {
            rt,
            scope: Scope::new(),
            functions: AST::empty(),
            help,
            variables: Rc::new(RefCell::new(Vec::new())),
            last_notebook: None,
            opts,
        }
    }

    /// Runs until `:quit` or Ctrl-D.
    pub fn run(mut self) -> anyhow::Result<()> {
        install_ctrl_c_handler();
        let config = Config::builder()
            .auto_add_history(false)
            .max_history_size(10_000)?
            .build();
        let mut editor: Editor<ReplHelper, FileHistory> = Editor::with_config(config)?;
        let functions: Vec<String> = self.help.names().map(str::to_string).collect();
        editor.set_helper(Some(ReplHelper::new(
            functions,
            self.help.methods(),
            self.variables.clone(),
        )));
        let history = history_path();
        if let Some(h) = &history {
            let _ = editor.load_history(h);
        }
        println!(
            "rtlab {} — :help for commands, Ctrl-D to quit",
            env!("CARGO_PKG_VERSION")
        );
        loop {
            match editor.readline("rtlab> ") {
                Ok(input) => {
                    if input.trim().is_empty() {
                        continue;
                    }
                    let _ = editor.add_history_entry(input.as_str());
                    if let Some(h) = &history {
                        // Saved after every entry so a killed REPL keeps its history.
                        if let Some(dir) = h.parent() {
                            let _ = std::fs::create_dir_all(dir);
                        }
                        let _ = editor.save_history(h);
                    }
                    if !self.handle(&input) {
                        break;
                    }
                }
                Err(ReadlineError::Interrupted) => {
                    println!("(Ctrl-C: input cleared; Ctrl-D or :quit to leave)");
                }
                Err(ReadlineError::Eof) => break,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Handles one input; returns false to quit.
    pub fn handle(&mut self, input: &str) -> bool {
        let trimmed = input.trim();
        if let Some(command) = trimmed.strip_prefix(':') {
            let (name, arg) = command
                .split_once(char::is_whitespace)
                .unwrap_or((command, ""));
            let arg = arg.trim();
            match name {
                "quit" | "q" | "exit" => return false,
                "help" | "h" => self.help_command(arg),
                "vars" => self.vars(),
                "reset" => {
                    self.scope.clear();
                    self.functions = AST::empty();
                    self.refresh_variables();
                    println!("scope cleared");
                }
                "time" => {
                    let start = Instant::now();
                    self.eval_and_show(arg);
                    println!("time: {:.3} s", start.elapsed().as_secs_f64());
                }
                "load" => self.load(arg),
                "run" => self.run_notebook(arg),
                "watch" => self.watch(arg),
                "cells" => self.cells(),
                other => println!("unknown command :{other}; :help lists the commands"),
            }
            return true;
        }
        self.eval_and_show(input);
        true
    }

    /// Evaluates one entry (or a `:load`ed file) in the session's scope, with the functions of every
    /// earlier entry, and keeps the functions this one defines.
    fn eval_keeping_functions(
        &mut self,
        origin: &str,
        source: &str,
    ) -> Result<Dynamic, crate::ScriptError> {
        let ast = self.rt.compile(origin, source)?;
        let combined = self.functions.merge(&ast);
        let result = self.rt.eval(origin, source, &mut self.scope, &combined);
        // Kept even when a later statement failed: a definition made before the error stays, as a
        // variable set before it does.
        self.functions = self.functions.merge(&ast.clone_functions_only());
        result
    }

    fn eval_and_show(&mut self, code: &str) {
        match self.eval_keeping_functions("<repl>", code) {
            Ok(value) => show(&value),
            Err(e) if e.cancelled => println!("cancelled (scope kept)"),
            Err(e) => {
                eprintln!("{}", render_error(&e));
                if let Some(hint) = self.unknown_function_hint(&e.message) {
                    eprintln!("{hint}");
                }
            }
        }
        self.rt.sink.take_capture();
        self.refresh_variables();
    }

    fn unknown_function_hint(&self, message: &str) -> Option<String> {
        let name = message.strip_prefix("no function `")?.split('`').next()?;
        let similar = self.help.similar(name);
        (!similar.is_empty()).then(|| {
            format!(
                "hint: did you mean {}? (:help NAME shows one)",
                similar.join(", ")
            )
        })
    }

    fn refresh_variables(&self) {
        *self.variables.borrow_mut() = variables_in(&self.scope, &self.rt.engine);
    }

    fn help_command(&self, name: &str) {
        if name.is_empty() {
            println!("Commands:");
            for (c, what) in COMMANDS {
                println!("  {c} {what}");
            }
            println!("\nstdlib functions (:help NAME for one):");
            let mut names: Vec<&str> = self
                .help
                .stdlib()
                .into_iter()
                .map(|d| d.name.as_str())
                .collect();
            names.dedup();
            for chunk in names.chunks(6) {
                println!("  {}", chunk.join("  "));
            }
            return;
        }
        if let Some((c, what)) = COMMANDS
            .iter()
            .find(|(c, _)| c.trim_start_matches(':') == name.trim_start_matches(':'))
        {
            println!("{c} {what}");
            return;
        }
        match self.help.render(name) {
            Some(text) => println!("{text}"),
            None => {
                let similar = self.help.similar(name);
                if similar.is_empty() {
                    println!("no function or command named `{name}`");
                } else {
                    println!(
                        "no function named `{name}`; similar: {}",
                        similar.join(", ")
                    );
                }
            }
        }
    }

    fn vars(&self) {
        if self.scope.is_empty() {
            println!("(no variables)");
            return;
        }
        let mut seen = std::collections::HashSet::new();
        let entries: Vec<(String, Dynamic)> = self
            .scope
            .iter_raw()
            .map(|(n, _, v)| (n.to_string(), v.clone()))
            .collect();
        for (name, value) in entries.into_iter().rev() {
            if !seen.insert(name.clone()) {
                continue; // shadowed
            }
            let shown = display_value(&value);
            let first = shown.lines().next().unwrap_or_default();
            let short: String = first.chars().take(60).collect();
            println!(
                "  {name}: {} = {short}{}",
                value.type_name(),
                if first.len() > 60 || shown.contains('\n') {
                    " …"
                } else {
                    ""
                }
            );
        }
    }

    fn load(&mut self, file: &str) {
        if file.is_empty() {
            println!("usage: :load FILE");
            return;
        }
        let path = self.rt.workspace.resolve(file);
        let origin = path.display().to_string();
        match std::fs::read_to_string(&path) {
            Err(e) => eprintln!("error: cannot read {origin}: {e}"),
            Ok(source) => {
                // The loaded script's relative paths resolve against its own directory, as in `rtlab run`.
                let ws = self.rt.workspace.clone();
                let result =
                    in_dir_of(&ws, &path, || self.eval_keeping_functions(&origin, &source));
                match result {
                    Ok(v) => show(&v),
                    Err(e) => eprintln!("{}", render_error(&e)),
                }
            }
        }
        self.rt.sink.take_capture();
        self.refresh_variables();
    }

    fn run_notebook(&mut self, file: &str) {
        if file.is_empty() {
            println!("usage: :run FILE");
            return;
        }
        let path = self.rt.workspace.resolve(file);
        // Reuse the in-memory cell results when the same script runs again.
        let mut notebook = match self.last_notebook.take() {
            Some(nb) if nb.path == path => nb,
            _ => Notebook::new(&path),
        };
        let mut scope = Scope::new();
        scope.push_constant("ARGS", rhai::Array::new());
        let result = in_dir_of(&self.rt.workspace, &path, || {
            notebook.run(&self.rt, &mut scope, &self.opts)
        });
        if let Err(e) = result {
            eprintln!("{}", render_error(&e));
        }
        // The notebook's variables join the REPL's scope, as IPython's %run does.
        let entries: Vec<(String, bool, Dynamic)> = scope
            .iter_raw()
            .map(|(n, c, v)| (n.to_string(), c, v.clone()))
            .collect();
        for (name, _constant, value) in entries {
            if name != "ARGS" {
                self.scope.set_or_push(name, value);
            }
        }
        self.last_notebook = Some(notebook);
        self.refresh_variables();
    }

    fn watch(&mut self, file: &str) {
        if file.is_empty() {
            println!("usage: :watch FILE");
            return;
        }
        let path = self.rt.workspace.resolve(file);
        in_dir_of(&self.rt.workspace, &path, || {
            crate::notebook::watch(
                &self.rt,
                &path,
                &self.opts,
                &|s| {
                    s.push_constant("ARGS", rhai::Array::new());
                },
                None,
            )
        });
        crate::engine::clear_cancel();
    }

    fn cells(&self) {
        let Some(nb) = &self.last_notebook else {
            println!("no notebook yet: :run FILE first");
            return;
        };
        for r in &nb.last_run {
            println!("{}", status_line(r));
            if !r.reads.is_empty() {
                println!("    reads:   {}", r.reads.join(", "));
            }
            if !r.defines.is_empty() {
                println!("    defines: {}", r.defines.join(", "));
            }
        }
    }
}

fn show(value: &Dynamic) {
    if !value.is_unit() {
        println!("{}", display_value(value));
    }
}

/// Runs `f` with the workspace's relative paths resolving against `script`'s directory, as in
/// `rtlab run`, then against the REPL's directory again.
fn in_dir_of<T>(ws: &rtlab_core::Workspace, script: &Path, f: impl FnOnce() -> T) -> T {
    let previous = ws.base_dir();
    ws.set_base_dir(script.parent().unwrap_or(Path::new(".")));
    let result = f();
    ws.set_base_dir(&previous);
    result
}
