//! Rhai-source parts of the stdlib (`stdlib/*.rhai`), embedded in the binary and importable as
//! `import "rtlab/NAME" as NAME;`. Any other import path resolves as a file relative to the
//! workspace's base directory when the `import` runs: the script's directory, also for a script the
//! REPL `:run`s from another directory. An imported file is noted as an input of the cell, so a cached
//! cell reruns when the file it imports changes.

use rhai::module_resolvers::{FileModuleResolver, StaticModuleResolver};
use rhai::{Engine, EvalAltResult, Module, ModuleResolver, Position, Scope, Shared};
use rtlab_core::Workspace;
use std::rc::Rc;

/// The embedded modules: import name and source.
pub const MODULES: &[(&str, &str)] = &[
    ("rtlab/fmt", include_str!("../../stdlib/fmt.rhai")),
    ("rtlab/criteria", include_str!("../../stdlib/criteria.rhai")),
];

/// The embedded modules first, then files relative to the workspace's base directory.
struct ImportResolver {
    embedded: StaticModuleResolver,
    workspace: Rc<Workspace>,
}

impl ModuleResolver for ImportResolver {
    fn resolve(
        &self,
        engine: &Engine,
        source: Option<&str>,
        path: &str,
        pos: Position,
    ) -> Result<Shared<Module>, Box<EvalAltResult>> {
        if self.embedded.contains_path(path) {
            return self.embedded.resolve(engine, source, path, pos);
        }
        // A file is read at each import, never from a cache: `:watch` and the REPL rerun a cell
        // because the file it imports changed, and must then see the change.
        let mut files = FileModuleResolver::new_with_path(self.workspace.base_dir());
        files.enable_cache(false);
        self.workspace.note_input(&files.get_file_path(path, None));
        files.resolve(engine, source, path, pos)
    }
}

/// Installs the import resolver of `workspace` on `engine`.
pub fn install_resolver(engine: &mut Engine, workspace: Rc<Workspace>) {
    let mut embedded = StaticModuleResolver::new();
    for (name, source) in MODULES {
        // The sources are part of the binary and tested; a failure here is a bug in rtlab itself.
        let ast = engine
            .compile(*source)
            .unwrap_or_else(|e| panic!("stdlib module {name} does not compile: {e}"));
        let module = Module::eval_ast_as_new(Scope::new(), &ast, engine)
            .unwrap_or_else(|e| panic!("stdlib module {name} does not load: {e}"));
        embedded.insert(*name, module);
    }
    engine.set_module_resolver(ImportResolver {
        embedded,
        workspace,
    });
}
