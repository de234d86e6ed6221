//! The doc index behind `:help NAME` and completion, read from Rhai's function metadata: every stdlib
//! function is registered with its `///` doc comment, so the docs live beside the code.

use rhai::Engine;
use std::collections::BTreeMap;

/// One registered function (one overload).
#[derive(Debug, Clone)]
pub struct FnDoc {
    pub name: String,
    pub signature: String,
    /// The doc comment, `///` markers removed.
    pub doc: String,
}

/// Every registered function by name, overloads grouped.
#[derive(Debug, Clone, Default)]
pub struct HelpIndex {
    by_name: BTreeMap<String, Vec<FnDoc>>,
}

impl HelpIndex {
    /// Reads the metadata of rtlab's own functions (Rhai's built-in packages are included too, so that
    /// `:help len` also answers).
    pub fn from_engine(engine: &Engine) -> HelpIndex {
        let mut index = HelpIndex::default();
        let Ok(json) = engine.gen_fn_metadata_to_json(true) else { return index };
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&json) else { return index };
        let functions = value.get("functions").and_then(|f| f.as_array()).cloned().unwrap_or_default();
        for f in functions {
            let name = f.get("name").and_then(|n| n.as_str()).unwrap_or_default().to_string();
            // Operators and internal getters are noise for a user looking for functions.
            if name.is_empty() || !name.starts_with(|c: char| c.is_alphabetic() || c == '_') || name.starts_with("get$") || name.starts_with("set$") || name.starts_with("anon$") {
                continue;
            }
            let signature = f.get("signature").and_then(|s| s.as_str()).unwrap_or(&name).to_string();
            let doc = f
                .get("docComments")
                .and_then(|d| d.as_array())
                .map(|lines| {
                    lines
                        .iter()
                        .filter_map(|l| l.as_str())
                        .flat_map(|block| block.lines().map(str::to_string).collect::<Vec<_>>())
                        .map(|l| strip_doc_marker(&l))
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .unwrap_or_default();
            index.by_name.entry(name.clone()).or_default().push(FnDoc { name, signature, doc });
        }
        for docs in index.by_name.values_mut() {
            docs.sort_by(|a, b| a.signature.cmp(&b.signature));
            docs.dedup_by(|a, b| a.signature == b.signature);
        }
        index
    }

    pub fn get(&self, name: &str) -> Option<&[FnDoc]> {
        self.by_name.get(name).map(Vec::as_slice)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// Functions whose doc comment is not empty: rtlab's own stdlib.
    pub fn documented(&self) -> impl Iterator<Item = &FnDoc> {
        self.by_name.values().flatten().filter(|d| !d.doc.is_empty())
    }

    /// Names close to `name`, for "did you mean" hints.
    pub fn similar(&self, name: &str) -> Vec<&str> {
        let lower = name.to_lowercase();
        self.names().filter(|n| n.contains(&lower) || lower.contains(*n) && n.len() > 3).take(8).collect()
    }

    /// `:help NAME` text: every overload's signature and its doc.
    pub fn render(&self, name: &str) -> Option<String> {
        let docs = self.get(name)?;
        let mut out = String::new();
        for d in docs {
            out.push_str(&d.signature);
            out.push('\n');
            if !d.doc.is_empty() {
                for line in d.doc.lines() {
                    out.push_str("    ");
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        Some(out.trim_end().to_string())
    }
}

fn strip_doc_marker(line: &str) -> String {
    let t = line.trim_start();
    let t = t.strip_prefix("///").or_else(|| t.strip_prefix("//!")).unwrap_or(t);
    t.strip_prefix(' ').unwrap_or(t).to_string()
}
