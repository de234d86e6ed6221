//! The Rhai surface of [`crate::hygiene`]: `df.split`, `df.decontaminate` and `overlap`.

use crate::hygiene::{self, TestSize};
use crate::{string_values, Frame};
use polars::prelude::*;
use rhai::plugin::*;
use rhai::{Dynamic, Map};
use rtlab_core::options::Options;

type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

/// The string columns of a frame (top level), in order.
fn string_columns(frame: &Frame) -> Vec<String> {
    frame
        .df
        .columns()
        .iter()
        .filter(|c| c.dtype() == &DataType::String)
        .map(|c| c.name().to_string())
        .collect()
}

/// Each row's texts in `cols` (nulls as empty text).
fn row_texts(frame: &Frame, cols: &[String], op: &str) -> RhaiResult<Vec<Vec<String>>> {
    let names: Vec<String> = frame
        .df
        .get_column_names()
        .iter()
        .map(|c| c.to_string())
        .collect();
    let mut per_column = Vec::new();
    for c in cols {
        if !names.contains(c) && !c.contains('.') {
            return Err(format!(
                "{op}: no column {c:?} (columns: {}); name string columns in cols / against_cols",
                names.join(", ")
            )
            .into());
        }
        per_column.push(string_values(frame, c).map_err(|e| format!("{op}: {e}"))?);
    }
    Ok((0..frame.df.height())
        .map(|r| {
            per_column
                .iter()
                .map(|col| col[r].clone().unwrap_or_default())
                .collect()
        })
        .collect())
}

/// The options both `decontaminate` and `overlap` take: `n`, `cols`, `against_cols`.
struct NgramSides {
    n: usize,
    rows: Vec<Vec<String>>,
    against: Vec<Vec<String>>,
    against_ids: Vec<String>,
}

fn sides(
    op: &'static str,
    frame: &Frame,
    against: &Frame,
    options: &Map,
) -> RhaiResult<NgramSides> {
    let o = Options::new(op, options, &["n", "cols", "against_cols"])?;
    let n = o
        .int_at_least("n", 1)?
        .map_or(hygiene::DEFAULT_N, |n| n as usize);
    let cols = o.strings("cols")?.unwrap_or_else(|| string_columns(frame));
    let against_names: Vec<String> = against
        .df
        .get_column_names()
        .iter()
        .map(|c| c.to_string())
        .collect();
    let against_cols = match o.strings("against_cols")? {
        Some(c) => c,
        None if ["prompt", "ref"]
            .iter()
            .all(|c| against_names.iter().any(|n| n == c)) =>
        {
            vec!["prompt".to_string(), "ref".to_string()]
        }
        None => string_columns(against),
    };
    if cols.is_empty() || against_cols.is_empty() {
        return Err(format!(
            "{op}: no string columns to compare; name them with cols and against_cols"
        )
        .into());
    }
    let against_ids = if against_names.iter().any(|c| c == "task_id") {
        string_values(against, "task_id")
            .map_err(|e| format!("{op}: {e}"))?
            .into_iter()
            .enumerate()
            .map(|(i, id)| id.unwrap_or_else(|| format!("row {i}")))
            .collect()
    } else {
        (0..against.df.height())
            .map(|i| format!("row {i}"))
            .collect()
    };
    Ok(NgramSides {
        n,
        rows: row_texts(frame, &cols, op)?,
        against: row_texts(against, &against_cols, op)?,
        against_ids,
    })
}

fn overlap_frame(sides: &NgramSides, found: &[hygiene::Overlap]) -> RhaiResult<Frame> {
    let df = df!(
        "row" => found.iter().map(|o| o.row as i64).collect::<Vec<_>>(),
        "task_id" => found.iter().map(|o| sides.against_ids[o.against_row].clone()).collect::<Vec<_>>(),
        "ngrams" => found.iter().map(|o| o.shared as i64).collect::<Vec<_>>(),
        "containment" => found.iter().map(|o| (o.containment * 1000.0).round() / 1000.0).collect::<Vec<_>>(),
        "example" => found.iter().map(|o| o.example.clone()).collect::<Vec<_>>(),
    )
    .map_err(|e| format!("overlap: {e}"))?;
    Ok(Frame::new(df))
}

pub fn register(module: &mut Module) {
    combine_with_exported_module!(module, "hygiene_functions", hygiene_functions);
}

#[export_module]
mod hygiene_functions {
    use super::*;

    /// Splits the rows in two by group, so that one group (a problem's `task_id`, a category) never
    /// lands on both sides: `#{train, test}`. Options: `by` (the group column, required), `test` (the
    /// test side: a share of the groups such as 0.5, or a number of groups such as 20), `seed` (0).
    /// The groups are ordered by a hash of the seed and their name and the first ones make the test
    /// side: the same seed gives the same split, whatever the rows' order.
    ///
    /// ```rhai
    /// let df = from_records([#{task_id: "a", x: 1}, #{task_id: "a", x: 2}, #{task_id: "b", x: 3}, #{task_id: "c", x: 4}]);
    /// let s = df.split(#{by: "task_id", test: 1, seed: 3});
    /// assert_eq(s.train.len() + s.test.len(), 4);
    /// let test_ids = s.test.column("task_id");
    /// assert(s.train.column("task_id").all(|id| !test_ids.contains(id)), "no group on both sides");
    /// ```
    #[rhai_fn(return_raw)]
    pub fn split(frame: &mut Frame, options: Map) -> RhaiResult<Map> {
        let o = Options::new("split", &options, &["by", "test", "seed"])?;
        let by = o.string("by")?.ok_or(
            "split: pass #{by: \"task_id\"} (the column whose groups must stay on one side)",
        )?;
        let test = match o.get("test") {
            None => {
                return Err(
                    "split: pass test (a share of the groups, e.g. 0.5, or a number of groups)"
                        .into(),
                )
            }
            Some(v) if v.is_float() => {
                let f = v.as_float().unwrap_or(f64::NAN);
                if !(0.0..=1.0).contains(&f) {
                    return Err(format!("split: test = {f}: a share must be between 0 and 1 (or give a whole number of groups)").into());
                }
                TestSize::Fraction(f)
            }
            Some(_) => TestSize::Groups(o.int_at_least("test", 0)?.unwrap_or(0) as usize),
        };
        let seed = o.int_at_least("seed", 0)?.unwrap_or(0) as u64;
        let groups = string_values(frame, &by).map_err(|e| format!("split: {e}"))?;
        if let Some(row) = groups.iter().position(Option::is_none) {
            return Err(format!("split: row {row} has no {by:?}; every row needs a group").into());
        }
        let groups: Vec<String> = groups.into_iter().map(Option::unwrap_or_default).collect();
        let side =
            hygiene::split_by_group(&groups, test, seed).map_err(|e| format!("split: {e}"))?;
        let mask = |want: bool| {
            BooleanChunked::from_iter_values("side".into(), side.iter().map(|s| *s == want))
        };
        let pick = |want: bool| -> RhaiResult<Frame> {
            Ok(Frame::new(
                frame
                    .df
                    .filter(&mask(want))
                    .map_err(|e| format!("split: {e}"))?,
            ))
        };
        let mut out = Map::new();
        out.insert("train".into(), Dynamic::from(pick(false)?));
        out.insert("test".into(), Dynamic::from(pick(true)?));
        Ok(out)
    }

    /// The rows that copy no row of `against` (a benchmark's problems): what is left to train on. A
    /// row copies a problem when it holds at least half of the specific token 13-grams of the
    /// problem's prompt or of its reference. Comments, whitespace and the names of signals do not
    /// matter (a copied design with renamed signals is found); n-grams in 3 or more problems, or in
    /// 1% (at least 10) of this frame's rows, are boilerplate and do not count, so rows that merely
    /// share Verilog's keywords or a port list stay. Options: `n` (13, GPT-3's contamination n-gram),
    /// `cols` (this frame's columns to compare: every string column), `against_cols` (`prompt` and
    /// `ref`, what `load_verilog_eval` gives, else every string column). Prints how many rows went
    /// and which problems they copy; `overlap(df, against)` lists them.
    ///
    /// ```rhai
    /// let bench = from_records([#{task_id: "Prob1", prompt: "count to nine",
    ///     ref: "module RefModule(input clk, input reset, output reg [3:0] q); always @(posedge clk) if (reset) q <= 4'd0; else if (q == 4'd9) q <= 4'd0; else q <= q + 4'd1; endmodule"}]);
    /// let train = from_records([
    ///     #{instruction: "a decade counter", output: "module cnt(input ck, input rst, output reg [3:0] v);\nalways @(posedge ck)\n  if (rst) v <= 4'd0;\n  else if (v == 4'd9) v <= 4'd0;\n  else v <= v + 4'd1;\nendmodule"},
    ///     #{instruction: "an and gate", output: "module g(input a, input b, output y); assign y = a & b; endmodule"}]);
    /// let kept = train.decontaminate(bench);
    /// assert_eq(kept.len(), 1);
    /// assert_eq(kept.row(0).instruction, "an and gate");
    /// ```
    #[rhai_fn(return_raw)]
    pub fn decontaminate(
        ctx: NativeCallContext,
        frame: &mut Frame,
        against: Frame,
        options: Map,
    ) -> RhaiResult<Frame> {
        if frame.df.height() == 0 {
            // Nothing to drop (and an empty frame's columns may have no type to compare).
            return Ok(frame.clone());
        }
        let sides = sides("decontaminate", frame, &against, &options)?;
        let found = hygiene::find_overlaps(&sides.rows, &sides.against, sides.n);
        let mut keep = vec![true; frame.df.height()];
        let mut rows_per_task: std::collections::BTreeMap<&str, usize> = Default::default();
        for o in &found {
            keep[o.row] = false;
            *rows_per_task
                .entry(&sides.against_ids[o.against_row])
                .or_default() += 1;
        }
        let dropped = keep.iter().filter(|k| !**k).count();
        let mut tasks: Vec<(&str, usize)> = rows_per_task.into_iter().collect();
        tasks.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let named: Vec<String> = tasks
            .iter()
            .take(5)
            .map(|(t, c)| format!("{t}: {c}"))
            .collect();
        let more = tasks.len().saturating_sub(5);
        rtlab_core::Workspace::of(&ctx).emit_line(&format!(
            "decontaminate: dropped {dropped} of {} rows that hold half or more of the specific {}-grams (signals renamed, boilerplate left out) of {} of {} rows of against{}{}",
            keep.len(),
            sides.n,
            tasks.len(),
            sides.against.len(),
            if named.is_empty() { String::new() } else { format!(" ({}", named.join(", ")) },
            match (named.is_empty(), more) {
                (true, _) => String::new(),
                (false, 0) => ")".to_string(),
                (false, m) => format!(", and {m} more)"),
            }
        ));
        let mask = BooleanChunked::from_iter_values("keep".into(), keep.into_iter());
        Ok(Frame::new(
            frame
                .df
                .filter(&mask)
                .map_err(|e| format!("decontaminate: {e}"))?,
        ))
    }

    /// `decontaminate` with the default options.
    #[rhai_fn(name = "decontaminate", return_raw)]
    pub fn decontaminate_default(
        ctx: NativeCallContext,
        frame: &mut Frame,
        against: Frame,
    ) -> RhaiResult<Frame> {
        decontaminate(ctx, frame, against, Map::new())
    }

    /// Which rows of `train` copy which rows of `against` (the rows `decontaminate` drops, and why):
    /// `row` (0-based, in `train`), `task_id` (of `against`, else its row), `ngrams` (the specific
    /// n-grams of the problem's prompt or reference that the row holds), `containment` (their share)
    /// and `example` (one of them, signals renamed `$0`, `$1`...). Options as `decontaminate`'s.
    ///
    /// ```rhai
    /// let bench = from_records([#{task_id: "Prob1", prompt: "p", ref: "module RefModule(input a, input b, input c, output y); assign y = (a & b) | (b & c) | (a & c); endmodule"}]);
    /// let train = from_records([#{output: "module maj(input x, input y, input z, output o); assign o = (x & y) | (y & z) | (x & z); endmodule"}]);
    /// let o = overlap(train, bench);
    /// assert_eq(o.row(0).task_id, "Prob1");
    /// ```
    #[rhai_fn(name = "overlap", return_raw)]
    pub fn overlap_with(train: Frame, against: Frame, options: Map) -> RhaiResult<Frame> {
        let sides = sides("overlap", &train, &against, &options)?;
        let found = hygiene::find_overlaps(&sides.rows, &sides.against, sides.n);
        overlap_frame(&sides, &found)
    }

    /// `overlap` with the default options.
    #[rhai_fn(name = "overlap", return_raw)]
    pub fn overlap(train: Frame, against: Frame) -> RhaiResult<Frame> {
        overlap_with(train, against, Map::new())
    }
}
