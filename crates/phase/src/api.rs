//! The phase crate's Rhai surface: `classify_phase`, `with_phase`, `split_by_phase`, `router` and its
//! methods. Options are read here into a [`PhaseTable`] or a [`Router`]; the classifier below never
//! sees a Rhai value.

use crate::{PhaseTable, Router};
use polars::prelude::*;
use rhai::plugin::*;
use rhai::{Array, Map};
use rtlab_core::OptionError;
use rtlab_data::Frame;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

/// From options: `keywords` (a map phase → array of keywords; Rhai maps iterate in key order, so
/// ties then break alphabetically) and `matching` ("substring", the plan's, or "word").
/// `router` passes its own keys too (`extra`).
pub(crate) fn table_from_options(
    function: &'static str,
    options: &Map,
    extra: &[&str],
) -> Result<PhaseTable, OptionError> {
    // The messages name `classify_phase`, whose options `router` shares.
    let rule = |rule: String| OptionError::Rule {
        function: "classify_phase".into(),
        rule,
    };
    let valid: Vec<&str> = ["keywords", "matching"]
        .iter()
        .chain(extra)
        .copied()
        .collect();
    let o = rtlab_core::options::Options::new(function, options, &valid)?;
    let mut table = PhaseTable::default_table();
    if let Some(k) = options.get("keywords") {
        let map = k.read_lock::<Map>().ok_or_else(|| {
            rule("`keywords` must be a map like #{synthesis: [\"yosys\"]}".into())
        })?;
        table.phases.clear();
        for (phase, words) in map.iter() {
            let arr = words.read_lock::<Array>().ok_or_else(|| {
                rule(format!("keywords of `{phase}` must be an array of strings"))
            })?;
            table.phases.push((
                phase.to_string(),
                arr.iter().map(|w| w.to_string().to_lowercase()).collect(),
            ));
        }
    }
    match o.string("matching")? {
        None => {}
        Some(m) if m == "substring" => table.whole_words = false,
        Some(m) if m == "word" => table.whole_words = true,
        Some(other) => {
            return Err(rule(format!(
                "`matching` must be \"substring\" or \"word\", not {other:?}"
            )))
        }
    }
    Ok(table)
}

pub fn register(module: &mut Module) {
    module.set_custom_type::<Router>("Router");
    combine_with_exported_module!(module, "phase_functions", phase_functions);
}

#[export_module]
mod phase_functions {
    use super::*;

    /// The chip-design phase of a text, by the phase-specialists plan's keyword table (see the module
    /// docs for ties and the `general` fallback).
    ///
    /// ```rhai
    /// assert_eq(classify_phase("Run yosys synthesis on the RTL"), "synthesis");
    /// assert_eq(classify_phase("nothing relevant here"), "general");
    /// ```
    pub fn classify_phase(text: &str) -> String {
        PhaseTable::default_table().classify(text)
    }

    /// `classify_phase` with options: `keywords` (your own table, a map phase → keywords) and `match`
    /// ("substring" as the plan does, or "word" for whole words, so "sta" no longer fires on "state").
    ///
    /// ```rhai
    /// assert_eq(classify_phase("the state machine", #{}), "timing");
    /// assert_eq(classify_phase("the state machine", #{matching: "word"}), "general");
    /// ```
    #[rhai_fn(name = "classify_phase", return_raw)]
    pub fn classify_phase_with(text: &str, options: Map) -> Result<String, Box<EvalAltResult>> {
        Ok(super::table_from_options("classify_phase", &options, &[])?.classify(text))
    }

    /// Adds a `phase` column classifying the text in `column`.
    #[rhai_fn(return_raw)]
    pub fn with_phase(frame: &mut Frame, column: &str) -> Result<Frame, Box<EvalAltResult>> {
        with_phase_opts(frame, column, Map::new())
    }

    /// Adds a `phase` column, with `classify_phase`'s options, plus `into` to name the column otherwise
    /// (a keyword table of design categories gives a `category` column, say).
    #[rhai_fn(name = "with_phase", return_raw)]
    pub fn with_phase_opts(
        frame: &mut Frame,
        column: &str,
        options: Map,
    ) -> Result<Frame, Box<EvalAltResult>> {
        let table = super::table_from_options("with_phase", &options, &["into"])?;
        let phases: Vec<String> = rtlab_data::strings(frame, column)
            .map_err(|e| format!("phase: {e}"))?
            .iter()
            .map(|t| table.classify(t))
            .collect();
        let into = rtlab_core::options::Options::new(
            "with_phase",
            &options,
            &["keywords", "matching", "into"],
        )?
        .string("into")?
        .unwrap_or_else(|| "phase".to_string());
        let mut df = frame.df.clone();
        df.with_column(Column::new(into.as_str().into(), phases))
            .map_err(|e| format!("with_phase: {e}"))?;
        Ok(Frame::new(df))
    }

    /// Writes `<out_dir>/<phase>/<phase>_training.jsonl` for every phase with documents, rows
    /// `{prompt, response, metadata: {source, phase}}` with the response cut to 2,000 characters, as the
    /// plan's separate_by_phase.py does. `frame` needs `content` and `source` columns (what
    /// `read_markdown_dir` gives); a `phase` column is used if present, else computed. Returns a summary
    /// frame `{phase, documents, path}`.
    #[rhai_fn(return_raw)]
    pub fn split_by_phase(
        ctx: NativeCallContext,
        frame: Frame,
        out_dir: &str,
    ) -> Result<Frame, Box<EvalAltResult>> {
        let table = PhaseTable::default_table();
        let contents = rtlab_data::strings(&frame, "content").map_err(|e| format!("phase: {e}"))?;
        let sources = rtlab_data::strings(&frame, "source").map_err(|e| format!("phase: {e}"))?;
        let phases = if frame
            .df
            .get_column_names()
            .iter()
            .any(|c| c.as_str() == "phase")
        {
            rtlab_data::strings(&frame, "phase").map_err(|e| format!("phase: {e}"))?
        } else {
            contents.iter().map(|c| table.classify(c)).collect()
        };
        let root = rtlab_core::Workspace::of(&ctx).resolve(out_dir);
        let (mut names, mut counts, mut paths) = (Vec::new(), Vec::new(), Vec::new());
        for phase in table.phase_names() {
            let mut lines = String::new();
            let mut n = 0i64;
            for ((content, source), p) in contents.iter().zip(&sources).zip(&phases) {
                if *p != phase {
                    continue;
                }
                let response: String = content.chars().take(2000).collect();
                let row = serde_json::json!({
                    "prompt": format!("As a {phase} expert, explain this concept:"),
                    "response": response,
                    "metadata": {"source": source, "phase": phase},
                });
                lines.push_str(&row.to_string());
                lines.push('\n');
                n += 1;
            }
            if n == 0 {
                continue;
            }
            let rel = format!("{phase}/{phase}_training.jsonl");
            let path = root.join(&rel);
            rtlab_core::workspace::write_atomic(&path, lines.as_bytes())
                .map_err(|e| format!("split_by_phase: cannot write {}: {e}", path.display()))?;
            names.push(phase.clone());
            counts.push(n);
            paths.push(format!("{out_dir}/{rel}"));
        }
        let df = DataFrame::new(
            names.len(),
            vec![
                Column::new("phase".into(), names),
                Column::new("documents".into(), counts),
                Column::new("path".into(), paths),
            ],
        )
        .map_err(|e| format!("split_by_phase: {e}"))?;
        Ok(Frame::new(df))
    }

    /// The plan's PhaseRouter. `specialists` maps phase → model name; `fallback` (default "llama3:8b")
    /// serves `general` and phases without a specialist. Options of `classify_phase` apply too.
    ///
    /// ```rhai
    /// let r = router(#{specialists: #{synthesis: "llama3:8b-synthesis"}});
    /// assert_eq(r.route("How do I optimize synthesis for area?"), "llama3:8b-synthesis");
    /// assert_eq(r.route("What is a good lunch?"), "llama3:8b");
    /// ```
    #[rhai_fn(return_raw)]
    pub fn router(options: Map) -> Result<Router, Box<EvalAltResult>> {
        let extra = ["specialists", "fallback"];
        let table = super::table_from_options("router", &options, &extra)?;
        let o = rtlab_core::options::Options::new(
            "router",
            &options,
            &["keywords", "matching", "specialists", "fallback"],
        )?;
        let mut specialists = BTreeMap::new();
        if let Some(s) = options.get("specialists") {
            let map = s
                .read_lock::<Map>()
                .ok_or("router: `specialists` must be a map phase → model name")?;
            for (phase, model) in map.iter() {
                specialists.insert(phase.to_string(), model.to_string());
            }
        }
        let fallback = o
            .string("fallback")?
            .unwrap_or_else(|| "llama3:8b".to_string());
        Ok(Router {
            table,
            specialists,
            fallback,
            stats: Rc::new(RefCell::new(BTreeMap::new())),
        })
    }

    /// The model a query goes to; counts the query for `stats()`.
    pub fn route(router: &mut Router, query: &str) -> String {
        let phase = router.table.classify(query);
        let model = router
            .specialists
            .get(&phase)
            .cloned()
            .unwrap_or_else(|| router.fallback.clone());
        router
            .stats
            .borrow_mut()
            .entry(model.clone())
            .or_insert((0, 0))
            .0 += 1;
        model
    }

    /// Records whether `model`'s answer was good (what the plan's supervisor decides).
    pub fn record(router: &mut Router, model: &str, success: bool) {
        let mut stats = router.stats.borrow_mut();
        let entry = stats.entry(model.to_string()).or_insert((0, 0));
        if success {
            entry.1 += 1;
        }
    }

    /// Queries and successes per specialist, with the success rate: the plan's `get_specialist_stats`.
    #[rhai_fn(return_raw)]
    pub fn stats(router: &mut Router) -> Result<Frame, Box<EvalAltResult>> {
        let stats = router.stats.borrow();
        let models: Vec<String> = stats.keys().cloned().collect();
        let queries: Vec<i64> = stats.values().map(|v| v.0).collect();
        let successes: Vec<i64> = stats.values().map(|v| v.1).collect();
        let rates: Vec<Option<f64>> = stats
            .values()
            .map(|v| (v.0 > 0).then(|| v.1 as f64 / v.0 as f64))
            .collect();
        let df = DataFrame::new(
            models.len(),
            vec![
                Column::new("specialist".into(), models),
                Column::new("queries".into(), queries),
                Column::new("successes".into(), successes),
                Column::new("success_rate".into(), rates),
            ],
        )
        .map_err(|e| format!("stats: {e}"))?;
        Ok(Frame::new(df))
    }
}

rhai::def_package! {
    /// Phase specialists: `classify_phase`, `with_phase`, `split_by_phase` and the `Router`.
    pub PhasePackage(module) {
        register(module);
    }
}
