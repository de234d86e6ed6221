//! What a cell reads and defines, from its Rhai AST: the edges of the notebook's dependency graph.
//!
//! Defines are top-level `let`/`const` names, script functions, and variables the cell assigns to or
//! calls a method on (Rhai methods such as `push` mutate in place). Reads are the variables and script
//! functions the cell mentions; the runner keeps those that exist when the cell starts.

use rhai::{ASTNode, Expr, Stmt, AST};
use std::collections::BTreeSet;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct CellDeps {
    /// `let`/`const` at the top level of the cell.
    pub declared: BTreeSet<String>,
    /// Variables possibly changed in place: assignment targets and method-call receivers.
    pub mutated: BTreeSet<String>,
    /// Every variable name mentioned.
    pub mentioned: BTreeSet<String>,
    /// Every function name called (plain calls, not methods).
    pub called: BTreeSet<String>,
    /// Script functions the cell defines (`fn name(...)`).
    pub functions: BTreeSet<String>,
    /// The `seed:` entries of the option maps the cell writes (`#{seed: 7}` → "7", `#{seed: s}` →
    /// "s"), for the provenance manifest.
    pub seeds: Vec<String>,
}

pub fn analyze(ast: &AST) -> CellDeps {
    let mut deps = CellDeps::default();
    for stmt in ast.statements() {
        if let Stmt::Var(x, ..) = stmt {
            deps.declared.insert(x.0.name.to_string());
        }
    }
    for f in ast.iter_functions() {
        deps.functions.insert(f.name.to_string());
    }
    ast.walk(&mut |path: &[ASTNode]| {
        match path.last() {
            Some(ASTNode::Expr(expr)) => match expr {
                Expr::Variable(x, ..) if x.2.is_empty() => {
                    deps.mentioned.insert(x.1.to_string());
                }
                Expr::FnCall(call, ..) if call.namespace.is_empty() => {
                    deps.called.insert(call.name.to_string());
                }
                // A map of constants is folded into one constant value by Rhai's optimizer.
                Expr::DynamicConstant(value, ..) => constant_seeds(value, &mut deps.seeds),
                Expr::Map(map, ..) => {
                    for (key, value) in &map.0 {
                        if key.name == "seed" {
                            deps.seeds.push(match value {
                                Expr::IntegerConstant(i, ..) => i.to_string(),
                                Expr::Variable(x, ..) => x.1.to_string(),
                                Expr::DynamicConstant(v, ..) => v.to_string(),
                                _ => "(computed)".to_string(),
                            });
                        }
                    }
                }
                Expr::Dot(bin, ..) | Expr::Index(bin, ..) => {
                    if let Some(name) = root_variable(&bin.lhs) {
                        // `x.push(1)`, `x.field = 1`, `x[0] = 1`: the receiver may change in place.
                        if matches!(expr, Expr::Dot(..)) {
                            deps.mutated.insert(name);
                        }
                    }
                }
                _ => {}
            },
            Some(ASTNode::Stmt(Stmt::Assignment(x))) => {
                if let Some(name) = root_variable(&x.1.lhs) {
                    deps.mutated.insert(name);
                }
            }
            _ => {}
        }
        true
    });
    deps
}

/// The `seed` entries of a constant map (and the maps and arrays inside it).
fn constant_seeds(value: &rhai::Dynamic, seeds: &mut Vec<String>) {
    if let Some(map) = value.read_lock::<rhai::Map>() {
        for (key, v) in map.iter() {
            if key.as_str() == "seed" {
                seeds.push(v.to_string());
            } else {
                constant_seeds(v, seeds);
            }
        }
    } else if let Some(array) = value.read_lock::<rhai::Array>() {
        for v in array.iter() {
            constant_seeds(v, seeds);
        }
    }
}

/// The variable at the root of `a`, `a.b.c` or `a[0].b`.
fn root_variable(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Variable(x, ..) if x.2.is_empty() => Some(x.1.to_string()),
        Expr::Dot(bin, ..) | Expr::Index(bin, ..) => root_variable(&bin.lhs),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deps(code: &str) -> CellDeps {
        analyze(
            &rhai::Engine::new()
                .compile(code)
                .expect("test code compiles"),
        )
    }

    #[test]
    fn lets_are_declared_and_uses_are_mentioned() {
        let d = deps("let a = b + c; const K = 3; if a > 1 { let inner = 2; }");
        assert_eq!(
            d.declared,
            ["K", "a"].iter().map(|s| s.to_string()).collect()
        );
        assert!(d.mentioned.contains("b") && d.mentioned.contains("c"));
        assert!(
            !d.declared.contains("inner"),
            "only top-level lets define cell outputs"
        );
    }

    #[test]
    fn assignments_and_method_calls_mutate() {
        let d = deps("total += 1; rows.push(3); m.field = 2; xs[0] = 1; print(y.len());");
        for name in ["total", "rows", "m", "xs", "y"] {
            assert!(
                d.mutated.contains(name),
                "{name} should count as possibly mutated"
            );
        }
    }

    #[test]
    fn functions_defined_and_called() {
        let d = deps("fn double(x) { x * 2 } let z = double(w);");
        assert!(d.functions.contains("double"));
        assert!(d.called.contains("double"));
        assert!(d.mentioned.contains("w"));
    }

    #[test]
    fn seeds_in_option_maps_are_found() {
        let d = deps("let a = f(#{n: 4, seed: 7}); let b = g(#{seed: s, x: #{seed: 1 + 2}});");
        assert_eq!(d.seeds, ["7", "s", "3"]);
    }

    #[test]
    fn closures_capture_variables_as_reads() {
        let d = deps("let f = |x| x + offset;");
        assert!(d.mentioned.contains("offset"));
    }
}
