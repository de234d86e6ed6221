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
        let Ok(json) = engine.gen_fn_metadata_to_json(true) else {
            return index;
        };
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&json) else {
            return index;
        };
        let functions = value
            .get("functions")
            .and_then(|f| f.as_array())
            .cloned()
            .unwrap_or_default();
        for f in functions {
            let name = f
                .get("name")
                .and_then(|n| n.as_str())
                .unwrap_or_default()
                .to_string();
            // Operators and internal getters are noise for a user looking for functions.
            if name.is_empty()
                || !name.starts_with(|c: char| c.is_alphabetic() || c == '_')
                || name.starts_with("get$")
                || name.starts_with("set$")
                || name.starts_with("anon$")
            {
                continue;
            }
            let signature = prettify(f.get("signature").and_then(|s| s.as_str()).unwrap_or(&name));
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
            index.by_name.entry(name.clone()).or_default().push(FnDoc {
                name,
                signature,
                doc,
            });
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

    /// Each function with the type of its first parameter, the receiver of a method call
    /// (`df.filter(...)` is `filter(df, ...)`): what completion after `value.` offers.
    pub fn methods(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .by_name
            .values()
            .flatten()
            .filter_map(|d| Some((d.name.clone(), receiver_type(&d.signature)?)))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// rtlab's own documented functions: those with a doc comment that a plain Rhai engine lacks.
    pub fn stdlib(&self) -> Vec<&FnDoc> {
        let plain = HelpIndex::from_engine(&Engine::new());
        self.documented()
            .filter(|d| {
                !plain
                    .get(&d.name)
                    .is_some_and(|docs| docs.iter().any(|p| p.signature == d.signature))
            })
            .collect()
    }

    /// Functions whose doc comment is not empty (rtlab's, and Rhai's own documented built-ins).
    pub fn documented(&self) -> impl Iterator<Item = &FnDoc> {
        self.by_name
            .values()
            .flatten()
            .filter(|d| !d.doc.is_empty())
    }

    /// Names close to `name` (a substring either way, or at most two edits), for "did you mean" hints.
    pub fn similar(&self, name: &str) -> Vec<&str> {
        let lower = name.to_lowercase();
        let mut scored: Vec<(usize, &str)> = self
            .names()
            .filter_map(|n| {
                let d = edit_distance(&lower, n);
                let related = d <= 2 || (n.len() > 3 && (n.contains(&lower) || lower.contains(n)));
                related.then_some((d, n))
            })
            .collect();
        scored.sort();
        scored.into_iter().map(|(_, n)| n).take(5).collect()
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

/// The type of a signature's first parameter: `filter(frame: DataFrame, e: Expr)` gives `DataFrame`.
fn receiver_type(signature: &str) -> Option<String> {
    let params = signature.split_once('(')?.1;
    let first = params.split([',', ')']).next()?;
    let ty = first.split_once(':')?.1.trim();
    (!ty.is_empty()).then(|| ty.to_string())
}

/// A value's type as signatures name it (`DataFrame`, `string`, `int`), for matching methods.
pub fn script_type_name(engine: &Engine, value: &rhai::Dynamic) -> String {
    let rust = value.type_name();
    match engine.map_type_name(rust) {
        // A type registered with a name (`DataFrame`) is already in the script's words.
        named if named != rust => named.to_string(),
        _ => prettify(rust),
    }
}

/// Rust types in Rhai's generated signatures, in the words a script author uses.
fn prettify(signature: &str) -> String {
    let mut s = signature.to_string();
    if let Some(start) = s.find("Result<") {
        // `-> Result<T, Box<EvalAltResult>>` is `-> T` to a script (errors become script errors).
        if let Some(comma) = s[start..].find(", Box<EvalAltResult>>") {
            let inner = s[start + 7..start + comma].to_string();
            s.replace_range(start..start + comma + ", Box<EvalAltResult>>".len(), &inner);
        }
    }
    for (rust, rhai) in [
        ("&mut ", ""),
        ("&str", "string"),
        ("ImmutableString", "string"),
        ("String", "string"),
        ("i64", "int"),
        ("f64", "float"),
        ("rhai::Array", "array"),
        ("Array", "array"),
        ("rhai::Map", "map"),
        ("Map", "map"),
        ("Dynamic", "any"),
        ("FnPtr", "closure"),
        ("rtlab::data::Frame", "DataFrame"),
        ("Frame", "DataFrame"),
        ("bool", "bool"),
        ("ImmutableString", "string"),
        ("-> ()", ""),
    ] {
        s = s.replace(rust, rhai);
    }
    s.trim_end().to_string()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn strip_doc_marker(line: &str) -> String {
    let t = line.trim_start();
    let t = t
        .strip_prefix("///")
        .or_else(|| t.strip_prefix("//!"))
        .unwrap_or(t);
    t.strip_prefix(' ').unwrap_or(t).to_string()
}
