//! Rhai-source parts of the stdlib (`stdlib/*.rhai`), embedded in the binary and importable as
//! `import "rtlab/NAME" as NAME;`. Any other import path resolves as a file relative to the script.

use rhai::module_resolvers::{FileModuleResolver, ModuleResolversCollection, StaticModuleResolver};
use rhai::{Engine, Module, Scope};
use std::path::Path;

/// The embedded modules: import name and source.
pub const MODULES: &[(&str, &str)] = &[
    ("rtlab/fmt", include_str!("../../stdlib/fmt.rhai")),
    ("rtlab/criteria", include_str!("../../stdlib/criteria.rhai")),
];

pub fn install_resolver(engine: &mut Engine, script_dir: &Path) {
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
    let mut resolvers = ModuleResolversCollection::new();
    resolvers.push(embedded);
    resolvers.push(FileModuleResolver::new_with_path(script_dir));
    engine.set_module_resolver(resolvers);
}
