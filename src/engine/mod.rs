//! The Rhai engine: one function builds it with the whole stdlib (every capability crate's package), and
//! renders script errors and help. The services stdlib functions share (the output sink, the
//! cancellation flag, value display) live in `rtlab-core` and are re-exported here.
//!
//! Main types: [`Runtime`] (an engine, its output sink and its workspace: what the REPL, the runner
//! and the notebook drive), [`OutputSink`], [`HelpIndex`] (the doc comments `:help` shows).

mod error;
mod help;
mod stdlib_modules;

pub use error::{render_error, ScriptError};
pub use help::{script_type_name, HelpIndex};
pub use rtlab_core::{
    cancel_requested, clear_cancel, display_value, install_ctrl_c_handler, OutputSink, Workspace,
};

use rhai::{Dynamic, Engine, Scope, AST};
use std::path::Path;
use std::rc::Rc;

/// An engine with the stdlib registered, the sink its `print`/`debug` write to, and the workspace
/// its functions work in (reached through the engine's default tag: see [`Workspace::of`]).
pub struct Runtime {
    pub engine: Engine,
    pub sink: OutputSink,
    pub workspace: Rc<Workspace>,
}

impl Runtime {
    /// Builds the engine with every stdlib package. `script_dir` is where relative `import` paths and
    /// relative file paths resolve from (the script's directory, or the REPL's working directory).
    pub fn new(script_dir: &Path) -> Runtime {
        let sink = OutputSink::new();
        let workspace = Workspace::new(script_dir, sink.clone());
        workspace.set_rtlab_code(crate::provenance::whole_identity());
        let mut engine = build_engine(sink.clone());
        workspace.install(&mut engine);
        stdlib_modules::install_resolver(&mut engine, Rc::clone(&workspace));
        Runtime {
            engine,
            sink,
            workspace,
        }
    }

    /// Compiles `source` (named `origin` in errors) into an AST.
    pub fn compile(&self, origin: &str, source: &str) -> Result<AST, ScriptError> {
        self.engine
            .compile(source)
            .map_err(|e| ScriptError::from_parse(origin, source, e))
    }

    /// Runs an AST in `scope`, returning the value of its last statement.
    pub fn eval(
        &self,
        origin: &str,
        source: &str,
        scope: &mut Scope<'static>,
        ast: &AST,
    ) -> Result<Dynamic, ScriptError> {
        clear_cancel();
        self.engine
            .eval_ast_with_scope::<Dynamic>(scope, ast)
            .map_err(|e| {
                let mut err = ScriptError::from_eval(origin, source, *e);
                // Only on this error path: building the doc index costs a few milliseconds.
                if let Some(name) = err
                    .message
                    .strip_prefix("no function `")
                    .and_then(|m| m.split('`').next())
                {
                    let similar = self
                        .help_index()
                        .similar(name)
                        .into_iter()
                        .filter(|n| *n != name)
                        .map(|n| n.to_string())
                        .collect::<Vec<_>>();
                    if !similar.is_empty() {
                        err.message
                            .push_str(&format!("; did you mean {}?", similar.join(", ")));
                    }
                }
                err
            })
    }

    /// The doc index of every registered function, for `:help` and completion.
    pub fn help_index(&self) -> HelpIndex {
        HelpIndex::from_engine(&self.engine)
    }
}

/// Builds the Rhai engine with rtlab's stdlib registered as packages, one per capability.
/// Every capability's rich types (how frames, plots, models, executors show and persist), in one
/// registry, installed once for the process: before the first engine is built, and by the CLI before
/// it prints anything. No package registers a type when it is built, so no engine, and no order of
/// building them, changes how a value shows.
pub fn install_rich_types() {
    rtlab_core::values::install(|| {
        let types = [
            rtlab_data::rich_types(),
            rtlab_slurm::rich_types(),
            rtlab_llm::api::rich_types(),
            rtlab_train::rich_types(),
        ]
        .concat();
        rtlab_core::values::Registry::new(types).expect("each capability tags its types uniquely")
    });
}

pub fn build_engine(sink: OutputSink) -> Engine {
    install_rich_types();
    let mut engine = Engine::new();
    // Scripts work on real datasets: raise Rhai's defaults that are sized for embedded configs.
    engine.set_max_expr_depths(256, 256);
    engine.set_max_call_levels(256);

    let print_sink = sink.clone();
    engine.on_print(move |text| print_sink.line(text));
    let debug_sink = sink.clone();
    engine.on_debug(move |text, source, pos| {
        let at = match (source, pos.line()) {
            (Some(src), Some(line)) => format!("[{src}:{line}] "),
            (None, Some(line)) => format!("[line {line}] "),
            _ => String::new(),
        };
        debug_sink.line(&format!("{at}{text}"));
    });
    // Checked on every Rhai operation: Ctrl-C sets the flag, the script stops at the next step.
    engine.on_progress(|_| {
        if cancel_requested() {
            Some(Dynamic::from("cancelled by Ctrl-C"))
        } else {
            None
        }
    });

    // One Rhai package per capability (`def_package!`), in this order (the order the functions are
    // searched in is part of the behaviour).
    use rhai::packages::Package;
    rtlab_data::DataPackage::new().register_into_engine(&mut engine);
    rtlab_phase::PhasePackage::new().register_into_engine(&mut engine);
    rtlab_verify::VerifyPackage::new().register_into_engine(&mut engine);
    rtlab_slurm::SlurmPackage::new().register_into_engine(&mut engine);
    rtlab_llm::LlmPackage::new().register_into_engine(&mut engine);
    rtlab_bench::BenchPackage::new().register_into_engine(&mut engine);
    rtlab_train::TrainPackage::new().register_into_engine(&mut engine);
    rtlab_core::CorePackage::new().register_into_engine(&mut engine);
    // `provenance()` needs every crate's code identity, so it lives here, above them all.
    engine.register_global_module(
        rhai::exported_module!(crate::provenance::provenance_functions).into(),
    );
    engine
}

#[cfg(test)]
mod tests {
    use rhai::packages::Package;
    use rhai::Dynamic;

    fn a_frame() -> Dynamic {
        let df = polars::df!("task" => ["mux", "fsm"], "ok" => [true, false]).unwrap();
        Dynamic::from(rtlab_data::Frame::new(df))
    }

    /// How a value shows is installed once, not registered by whichever package is built first: a
    /// frame shows as the same table before any engine exists, and after packages are built in any
    /// order.
    #[test]
    fn a_frame_shows_the_same_without_an_engine_and_whatever_packages_were_built() {
        super::install_rich_types();
        let before = crate::engine::display_value(&a_frame());
        assert!(
            before.contains("task") && before.contains("mux"),
            "{before}"
        );
        assert!(!before.contains("rtlab_data"), "{before}");
        let mut reversed = rhai::Engine::new();
        rtlab_train::TrainPackage::new().register_into_engine(&mut reversed);
        rtlab_slurm::SlurmPackage::new().register_into_engine(&mut reversed);
        rtlab_data::DataPackage::new().register_into_engine(&mut reversed);
        assert_eq!(crate::engine::display_value(&a_frame()), before);
        let _ = super::build_engine(super::OutputSink::new());
        assert_eq!(crate::engine::display_value(&a_frame()), before);
    }
}
