//! DataFrame methods for Rhai, thin wrappers that keep polars' names (`filter`, `group_by`, `sql`, ...).
//! Lazy plans run on polars' thread pool; results are sorted where polars leaves order open, so output
//! is deterministic.

use super::convert::{from_records, to_records};
use super::expr::{expr_from, exprs_from, Expr};
use crate::expr::column;
use crate::{DataError, Frame};
use polars::prelude::*;
use rhai::plugin::*;
use rhai::{Array, Dynamic, FnPtr, Map};

type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

fn fail(op: &str, e: impl std::fmt::Display) -> Box<EvalAltResult> {
    format!("{op}: {e}").into()
}

fn lazy_collect(op: &str, lf: LazyFrame) -> RhaiResult<Frame> {
    lf.collect().map(Frame::new).map_err(|e| fail(op, e))
}

/// The result of `df.group_by(keys)`, waiting for `.agg([...])`.
#[derive(Clone)]
pub struct GroupBy {
    frame: Frame,
    keys: Vec<Expr>,
    key_names: Vec<String>,
}

fn names_of(values: &Array, what: &str) -> RhaiResult<Vec<String>> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            if v.is_string() {
                Ok(v.to_string())
            } else {
                Err(format!("{what}[{i}] is a {}; expected a column name", v.type_name()).into())
            }
        })
        .collect()
}

/// The output name of a group key: the last segment of a dotted path.
fn key_name(path: &str) -> String {
    path.rsplit('.').next().unwrap_or(path).to_string()
}

pub fn register(module: &mut Module) {
    module.set_custom_type::<GroupBy>("GroupBy");
    combine_with_exported_module!(module, "frame_functions", frame_functions);
}

#[export_module]
mod frame_functions {
    use super::*;

    /// Rows where `condition` holds.
    ///
    /// ```rhai
    /// let df = from_records([#{score: 0.97}, #{score: 0.5}]);
    /// assert_eq(df.filter(col("score") >= 0.95).len(), 1);
    /// ```
    #[rhai_fn(return_raw)]
    pub fn filter(frame: &mut Frame, condition: Expr) -> RhaiResult<Frame> {
        lazy_collect("filter", frame.df.clone().lazy().filter(condition.0))
    }

    /// Keeps the given columns (names, dotted paths or expressions).
    #[rhai_fn(return_raw)]
    pub fn select(frame: &mut Frame, columns: Array) -> RhaiResult<Frame> {
        let exprs = exprs_from(&columns, "select")?;
        lazy_collect("select", frame.df.clone().lazy().select(exprs))
    }

    /// Adds (or replaces) a column computed by `e`; name it with `.alias`.
    ///
    /// ```rhai
    /// let df = from_records([#{output: "module m; endmodule"}]);
    /// let df = df.with_column(col("output").str_len().alias("chars"));
    /// assert_eq(df.columns(), ["output", "chars"]);
    /// ```
    #[rhai_fn(return_raw)]
    pub fn with_column(frame: &mut Frame, e: Expr) -> RhaiResult<Frame> {
        lazy_collect("with_column", frame.df.clone().lazy().with_column(e.0))
    }

    /// Sorts ascending by a column.
    #[rhai_fn(name = "sort", return_raw)]
    pub fn sort(frame: &mut Frame, by: &str) -> RhaiResult<Frame> {
        sort_with(frame, by, Map::new())
    }

    /// Sorts by a column; `#{descending: true}` reverses. Ties keep their order (stable).
    ///
    /// ```rhai
    /// let df = from_records([#{n: 1}, #{n: 3}, #{n: 2}]);
    /// assert_eq(df.sort("n", #{descending: true}).row(0).n, 3);
    /// ```
    #[rhai_fn(name = "sort", return_raw)]
    pub fn sort_with(frame: &mut Frame, by: &str, options: Map) -> RhaiResult<Frame> {
        let descending = rtlab_core::options::Options::new("sort", &options, &["descending"])?
            .bool("descending")?
            .unwrap_or(false);
        let opts = SortMultipleOptions::default()
            .with_order_descending(descending)
            .with_maintain_order(true)
            .with_nulls_last(true);
        lazy_collect(
            "sort",
            frame.df.clone().lazy().sort_by_exprs([column(by)], opts),
        )
    }

    /// Groups rows by key columns (dotted paths allowed); follow with `.agg([...])`.
    ///
    /// ```rhai
    /// let df = from_records([#{c: "fsm", s: 1.0}, #{c: "fsm", s: 0.0}, #{c: "alu", s: 1.0}]);
    /// let t = df.group_by(["c"]).agg([col("s").mean().alias("pass"), len().alias("n")]);
    /// assert_eq(t.row(1), #{c: "fsm", pass: 0.5, n: 2});
    /// ```
    #[rhai_fn(return_raw)]
    pub fn group_by(frame: &mut Frame, keys: Array) -> RhaiResult<GroupBy> {
        let key_names = names_of(&keys, "group_by")?;
        let keys = key_names
            .iter()
            .map(|k| Expr(column(k).alias(key_name(k))))
            .collect();
        Ok(GroupBy {
            frame: frame.clone(),
            keys,
            key_names: key_names.iter().map(|k| key_name(k)).collect(),
        })
    }

    /// Aggregates each group; the result is sorted by the keys.
    #[rhai_fn(return_raw)]
    pub fn agg(groups: &mut GroupBy, aggregations: Array) -> RhaiResult<Frame> {
        let aggs = exprs_from(&aggregations, "agg")?;
        let keys: Vec<_> = groups.keys.iter().map(|k| k.0.clone()).collect();
        let names: Vec<PlSmallStr> = groups
            .key_names
            .iter()
            .map(|k| PlSmallStr::from_str(k))
            .collect();
        let lf = groups
            .frame
            .df
            .clone()
            .lazy()
            .group_by(keys)
            .agg(aggs)
            .sort(names, SortMultipleOptions::default());
        lazy_collect("agg", lf)
    }

    /// Counts rows per value of a column (dotted paths allowed): columns `[value, count]`, most frequent
    /// first, ties by value.
    ///
    /// ```rhai
    /// let df = from_records([#{c: "fsm"}, #{c: "alu"}, #{c: "fsm"}]);
    /// assert_eq(df.value_counts("c").row(0), #{c: "fsm", count: 2});
    /// ```
    #[rhai_fn(return_raw)]
    pub fn value_counts(frame: &mut Frame, column_name: &str) -> RhaiResult<Frame> {
        let name = key_name(column_name);
        let lf = frame
            .df
            .clone()
            .lazy()
            .group_by([column(column_name).alias(name.as_str())])
            .agg([len().cast(DataType::Int64).alias("count")])
            .sort_by_exprs(
                [
                    polars::prelude::col("count"),
                    polars::prelude::col(name.as_str()),
                ],
                SortMultipleOptions::default()
                    .with_order_descending_multi([true, false])
                    .with_nulls_last(true),
            );
        lazy_collect("value_counts", lf)
    }

    /// Joins on a column (or an array of columns); `how` is "inner", "left", "full", "semi", "anti"
    /// or "cross".
    ///
    /// ```rhai
    /// let problems = from_records([#{task_id: "a", prompt: "p"}, #{task_id: "b", prompt: "q"}]);
    /// let descr = from_records([#{task_id: "a", detail: "d"}]);
    /// assert_eq(problems.join(descr, "task_id", "left").len(), 2);
    /// ```
    #[rhai_fn(return_raw)]
    pub fn join(frame: &mut Frame, other: Frame, on: Dynamic, how: &str) -> RhaiResult<Frame> {
        let keys: Vec<String> = if on.is_string() {
            vec![on.to_string()]
        } else if let Some(a) = on.read_lock::<Array>() {
            names_of(&a, "join on")?
        } else {
            return Err("join: `on` must be a column name or an array of names".into());
        };
        let how = match how {
            "inner" => JoinType::Inner,
            "left" => JoinType::Left,
            "right" => JoinType::Right,
            "full" | "outer" => JoinType::Full,
            "semi" => JoinType::Semi,
            "anti" => JoinType::Anti,
            "cross" => JoinType::Cross,
            other => {
                return Err(format!(
                "join: unknown `how` {other:?}; use inner, left, right, full, semi, anti or cross"
            )
                .into())
            }
        };
        let on: Vec<_> = keys
            .iter()
            .map(|k| polars::prelude::col(k.as_str()))
            .collect();
        let mut args = JoinArgs::new(how);
        if matches!(args.how, JoinType::Full) {
            args = args.with_coalesce(JoinCoalesce::CoalesceColumns);
        }
        lazy_collect(
            "join",
            frame
                .df
                .clone()
                .lazy()
                .join(other.df.lazy(), on.clone(), on, args),
        )
    }

    /// Drops duplicate rows (all columns), keeping the first.
    #[rhai_fn(name = "unique", return_raw)]
    pub fn unique_all(frame: &mut Frame) -> RhaiResult<Frame> {
        frame
            .df
            .unique_stable(None, UniqueKeepStrategy::First, None)
            .map(Frame::new)
            .map_err(|e| fail("unique", e))
    }

    /// Drops rows whose `subset` columns repeat an earlier row, keeping the first.
    ///
    /// ```rhai
    /// let df = from_records([#{i: "x", o: 1}, #{i: "x", o: 2}, #{i: "y", o: 3}]);
    /// assert_eq(df.unique(["i"]).len(), 2);
    /// ```
    #[rhai_fn(name = "unique", return_raw)]
    pub fn unique_subset(frame: &mut Frame, subset: Array) -> RhaiResult<Frame> {
        let subset = names_of(&subset, "unique")?;
        frame
            .df
            .unique_stable(Some(&subset), UniqueKeepStrategy::First, None)
            .map(Frame::new)
            .map_err(|e| fail("unique", e))
    }

    /// All rows in a random order fixed by `seed`.
    ///
    /// ```rhai
    /// let df = from_records([#{n: 1}, #{n: 2}, #{n: 3}]);
    /// assert_eq(df.shuffle(42).to_records(), df.shuffle(42).to_records());
    /// ```
    #[rhai_fn(return_raw)]
    pub fn shuffle(frame: &mut Frame, seed: i64) -> RhaiResult<Frame> {
        let n = frame.df.height();
        frame
            .df
            .sample_n_literal(n, false, Some(true), Some(seed as u64))
            .map(Frame::new)
            .map_err(|e| fail("shuffle", e))
    }

    /// `n` rows drawn without replacement, fixed by `seed`.
    #[rhai_fn(return_raw)]
    pub fn sample(frame: &mut Frame, n: i64, seed: i64) -> RhaiResult<Frame> {
        if n < 0 || n as usize > frame.df.height() {
            return Err(format!(
                "sample: n = {n} but the frame has {} rows",
                frame.df.height()
            )
            .into());
        }
        frame
            .df
            .sample_n_literal(n as usize, false, Some(true), Some(seed as u64))
            .map(Frame::new)
            .map_err(|e| fail("sample", e))
    }

    /// Rows `offset..offset+len`.
    pub fn slice(frame: &mut Frame, offset: i64, len: i64) -> Frame {
        Frame::new(frame.df.slice(offset, len.max(0) as usize))
    }

    /// The last `n` rows.
    pub fn tail(frame: &mut Frame, n: i64) -> Frame {
        Frame::new(frame.df.tail(Some(n.max(0) as usize)))
    }

    /// Column names, in order.
    #[rhai_fn(pure)]
    pub fn columns(frame: &mut Frame) -> Array {
        frame
            .df
            .get_column_names()
            .into_iter()
            .map(|n| Dynamic::from(n.to_string()))
            .collect()
    }

    /// Column name → polars type, as text (`str`, `i64`, `struct[2]`, ...).
    #[rhai_fn(pure)]
    pub fn schema(frame: &mut Frame) -> Map {
        frame
            .df
            .schema()
            .iter()
            .map(|(n, t)| (n.as_str().into(), Dynamic::from(t.to_string())))
            .collect()
    }

    /// Replaces a struct column by its fields: `df.unnest("metadata")` gives `category`, `source`, ...
    #[rhai_fn(return_raw)]
    pub fn unnest(frame: &mut Frame, column_name: &str) -> RhaiResult<Frame> {
        frame
            .df
            .unnest([column_name], None)
            .map(Frame::new)
            .map_err(|e| fail("unnest", e))
    }

    /// Summary statistics per column: type, non-null count, nulls, and mean/std/min/max (numbers) or
    /// min/max (strings, by text).
    #[rhai_fn(return_raw)]
    pub fn describe(frame: &mut Frame) -> RhaiResult<Frame> {
        super::describe_impl(&frame.df)
            .map(Frame::new)
            .map_err(|e| fail("describe", e))
    }

    /// Every row as a map (nested structs as maps). Slow on big frames: prefer expressions.
    #[rhai_fn(return_raw)]
    pub fn to_records(frame: &mut Frame) -> RhaiResult<Array> {
        Ok(super::to_records(frame)?)
    }

    /// Row `i` as a map; negative `i` counts from the end.
    #[rhai_fn(return_raw)]
    pub fn row(frame: &mut Frame, i: i64) -> RhaiResult<Dynamic> {
        let n = frame.df.height() as i64;
        let idx = if i < 0 { n + i } else { i };
        if idx < 0 || idx >= n {
            return Err(format!("row {i} is out of range: the frame has {n} rows").into());
        }
        let one = Frame::new(frame.df.slice(idx, 1));
        Ok(super::to_records(&one)?
            .into_iter()
            .next()
            .unwrap_or_default())
    }

    /// Calls `f` on every row (a map) and builds a frame from the maps it returns. The slow path: each row
    /// goes through Rhai; use expressions when you can.
    ///
    /// ```rhai
    /// let df = from_records([#{a: 1}, #{a: 2}]);
    /// let out = df.map_rows(|r| #{a: r.a, twice: r.a * 2});
    /// assert_eq(out.row(1).twice, 4);
    /// ```
    #[rhai_fn(return_raw)]
    pub fn map_rows(ctx: NativeCallContext, frame: &mut Frame, f: FnPtr) -> RhaiResult<Frame> {
        let rows = super::to_records(frame)?;
        let mut out = Array::with_capacity(rows.len());
        for (i, row) in rows.into_iter().enumerate() {
            if rtlab_core::cancel_requested() {
                return Err("cancelled by Ctrl-C".into());
            }
            let mapped: Dynamic = f
                .call_within_context(&ctx, (row,))
                .map_err(|e| fail(&format!("map_rows: row {i}"), e))?;
            out.push(mapped);
        }
        Ok(super::from_records(&out, "map_rows result")?)
    }

    /// Runs a SQL query over the frame, through polars' SQL engine; the frame is the table `self`.
    ///
    /// ```rhai
    /// let df = from_records([#{c: "fsm", s: 1}, #{c: "fsm", s: 0}, #{c: "alu", s: 1}]);
    /// let t = df.sql("SELECT c, SUM(s) AS passed FROM self GROUP BY c ORDER BY c");
    /// assert_eq(t.row(0), #{c: "alu", passed: 1});
    /// ```
    #[rhai_fn(return_raw)]
    pub fn sql(frame: &mut Frame, query: &str) -> RhaiResult<Frame> {
        let mut ctx = polars::sql::SQLContext::new();
        ctx.register("self", frame.df.clone().lazy());
        let lf = ctx.execute(query).map_err(|e| fail("sql", e))?;
        lazy_collect("sql", lf)
    }

    /// Stacks frames; columns missing from some get nulls (schemas are unified).
    ///
    /// ```rhai
    /// let a = from_records([#{x: 1}]);
    /// let b = from_records([#{x: 2, y: "new"}]);
    /// assert_eq(concat([a, b]).columns(), ["x", "y"]);
    /// ```
    #[rhai_fn(return_raw)]
    pub fn concat(frames: Array) -> RhaiResult<Frame> {
        let mut dfs = Vec::with_capacity(frames.len());
        for (i, f) in frames.iter().enumerate() {
            match f.read_lock::<Frame>() {
                Some(f) => dfs.push(f.df.clone()),
                None => {
                    return Err(
                        format!("concat: item {i} is a {}, not a DataFrame", f.type_name()).into(),
                    )
                }
            }
        }
        if dfs.is_empty() {
            return Ok(Frame::new(DataFrame::empty()));
        }
        match polars::functions::concat_df_diagonal(&dfs) {
            Ok(df) => Ok(Frame::new(df)),
            // Struct columns with different fields (metadata from two sources, say) do not stack in
            // polars: go through rows, which infers the union of the fields.
            Err(_) => {
                let mut rows = Array::new();
                for df in dfs {
                    rows.extend(super::to_records(&Frame::new(df))?);
                }
                Ok(super::from_records(&rows, "concat")?)
            }
        }
    }

    /// Builds a frame from an array of maps (nested maps become struct columns).
    #[rhai_fn(return_raw)]
    pub fn from_records(records: Array) -> RhaiResult<Frame> {
        Ok(super::from_records(&records, "records")?)
    }

    /// A whole column as an array.
    #[rhai_fn(name = "column", return_raw)]
    pub fn column_values(frame: &mut Frame, name: &str) -> RhaiResult<Array> {
        let one = lazy_collect(
            "column",
            frame
                .df
                .clone()
                .lazy()
                .select([expr_from(&Dynamic::from(name.to_string()))?]),
        )?;
        Ok(super::to_records(&one)?
            .into_iter()
            .map(|r| {
                r.read_lock::<Map>()
                    .and_then(|m| m.values().next().cloned())
                    .unwrap_or_default()
            })
            .collect())
    }
}

pub fn describe_impl(df: &DataFrame) -> Result<DataFrame, DataError> {
    let mut names = Vec::new();
    let mut types = Vec::new();
    let mut counts = Vec::new();
    let mut nulls = Vec::new();
    let mut means: Vec<Option<f64>> = Vec::new();
    let mut stds: Vec<Option<f64>> = Vec::new();
    let mut mins: Vec<Option<String>> = Vec::new();
    let mut maxs: Vec<Option<String>> = Vec::new();
    for c in df.columns() {
        let s = c.as_materialized_series();
        names.push(s.name().to_string());
        types.push(s.dtype().to_string());
        counts.push((s.len() - s.null_count()) as i64);
        nulls.push(s.null_count() as i64);
        if s.dtype().is_primitive_numeric() || s.dtype().is_bool() {
            let f = s.cast(&DataType::Float64)?;
            means.push(f.mean());
            stds.push(f.std(1));
            mins.push(f.min::<f64>()?.map(|v| v.to_string()));
            maxs.push(f.max::<f64>()?.map(|v| v.to_string()));
        } else if s.dtype() == &DataType::String {
            means.push(None);
            stds.push(None);
            let sorted = s.sort(SortOptions::default().with_nulls_last(true))?;
            let non_null = sorted.drop_nulls();
            let ca = non_null.str()?;
            let first = ca.get(0).map(|v| v.chars().take(40).collect());
            let last = ca
                .len()
                .checked_sub(1)
                .and_then(|i| ca.get(i))
                .map(|v| v.chars().take(40).collect());
            mins.push(first);
            maxs.push(last);
        } else {
            means.push(None);
            stds.push(None);
            mins.push(None);
            maxs.push(None);
        }
    }
    Ok(DataFrame::new(
        names.len(),
        vec![
            Column::new("column".into(), names),
            Column::new("dtype".into(), types),
            Column::new("count".into(), counts),
            Column::new("nulls".into(), nulls),
            Column::new("mean".into(), means),
            Column::new("std".into(), stds),
            Column::new("min".into(), mins),
            Column::new("max".into(), maxs),
        ],
    )?)
}
