//! The Rhai `Expr`: column expressions mirroring polars' Python API, `col("metadata.category") ==
//! "fsm"`, `col("score") >= 0.95 & col("output").str_len() > 20`, `.alias`, `.is_in`, aggregations.
//!
//! Operators mix expressions with plain values on either side; `&`, `|` and `!` combine conditions.

use super::convert::dynamic_to_series;
use crate::expr::column;
use polars::prelude::{self as pl, lit as pl_lit, Expr as PlExpr, LiteralValue};
use rhai::plugin::*;
use rhai::{Array, Dynamic, ImmutableString};

/// The Rhai `Expr`.
#[derive(Clone, Debug)]
pub struct Expr(pub PlExpr);

fn to_expr(value: &Dynamic) -> Result<PlExpr, Box<EvalAltResult>> {
    if let Some(e) = value.read_lock::<Expr>() {
        return Ok(e.0.clone());
    }
    if let Ok(i) = value.as_int() {
        return Ok(pl_lit(i));
    }
    if let Ok(f) = value.as_float() {
        return Ok(pl_lit(f));
    }
    if let Ok(b) = value.as_bool() {
        return Ok(pl_lit(b));
    }
    if value.is_string() {
        return Ok(pl_lit(value.to_string()));
    }
    if value.is_unit() {
        return Ok(pl_lit(LiteralValue::untyped_null()));
    }
    Err(format!(
        "cannot use a {} in an expression; use a number, string, bool or col(...)",
        value.type_name()
    )
    .into())
}

pub fn register(module: &mut Module) {
    module.set_custom_type::<Expr>("Expr");
    // Shown at the REPL as what it computes; an expression is not data, so it does not persist.
    FuncRegistration::new("to_string").set_into_module(module, |e: &mut Expr| format!("{:?}", e.0));
    FuncRegistration::new("to_debug").set_into_module(module, |e: &mut Expr| format!("{:?}", e.0));

    // Binary operators: Expr op Expr, Expr op value, value op Expr.
    macro_rules! binary {
        ($op:literal, $f:expr) => {{
            let f: fn(PlExpr, PlExpr) -> PlExpr = $f;
            FuncRegistration::new($op)
                .set_into_module(module, move |a: Expr, b: Expr| Expr(f(a.0, b.0)));
            FuncRegistration::new($op)
                .set_into_module(module, move |a: Expr, b: i64| Expr(f(a.0, pl_lit(b))));
            FuncRegistration::new($op)
                .set_into_module(module, move |a: Expr, b: f64| Expr(f(a.0, pl_lit(b))));
            FuncRegistration::new($op)
                .set_into_module(module, move |a: Expr, b: bool| Expr(f(a.0, pl_lit(b))));
            FuncRegistration::new($op)
                .set_into_module(module, move |a: Expr, b: ImmutableString| {
                    Expr(f(a.0, pl_lit(b.to_string())))
                });
            FuncRegistration::new($op)
                .set_into_module(module, move |a: i64, b: Expr| Expr(f(pl_lit(a), b.0)));
            FuncRegistration::new($op)
                .set_into_module(module, move |a: f64, b: Expr| Expr(f(pl_lit(a), b.0)));
            FuncRegistration::new($op)
                .set_into_module(module, move |a: ImmutableString, b: Expr| {
                    Expr(f(pl_lit(a.to_string()), b.0))
                });
        }};
    }
    binary!("==", |a, b| a.eq(b));
    binary!("!=", |a, b| a.neq(b));
    binary!(">", |a, b| a.gt(b));
    binary!(">=", |a, b| a.gt_eq(b));
    binary!("<", |a, b| a.lt(b));
    binary!("<=", |a, b| a.lt_eq(b));
    binary!("+", |a, b| a + b);
    binary!("-", |a, b| a - b);
    binary!("*", |a, b| a * b);
    binary!("/", |a, b| a / b);
    binary!("%", |a, b| a % b);
    binary!("&", |a, b| a.and(b));
    binary!("|", |a, b| a.or(b));
    FuncRegistration::new("!").set_into_module(module, |a: Expr| Expr(a.0.not()));
    FuncRegistration::new("-").set_into_module(module, |a: Expr| Expr(a.0 * pl_lit(-1)));

    combine_with_exported_module!(module, "expr_functions", expr_functions);
}

#[export_module]
mod expr_functions {
    use super::*;

    /// A column by name. Dots reach into struct columns: `col("metadata.category")`.
    ///
    /// ```rhai
    /// let df = from_records([#{metadata: #{category: "fsm"}}, #{metadata: #{category: "alu"}}]);
    /// assert_eq(df.filter(col("metadata.category") == "fsm").len(), 1);
    /// ```
    pub fn col(name: &str) -> Expr {
        Expr(column(name))
    }

    /// A literal value as an expression: `lit(1)`, `lit("fsm")`.
    #[rhai_fn(return_raw)]
    pub fn lit(value: Dynamic) -> Result<Expr, Box<EvalAltResult>> {
        Ok(Expr(to_expr(&value)?))
    }

    /// Renames the expression's output column.
    pub fn alias(e: &mut Expr, name: &str) -> Expr {
        Expr(e.0.clone().alias(name))
    }

    /// True where the value is one of `values` (strings, or numbers, or booleans).
    ///
    /// ```rhai
    /// let df = from_records([#{c: "fsm"}, #{c: "alu"}, #{c: "mux"}]);
    /// assert_eq(df.filter(col("c").is_in(["fsm", "mux"])).len(), 2);
    /// ```
    #[rhai_fn(return_raw)]
    pub fn is_in(e: &mut Expr, values: Array) -> Result<Expr, Box<EvalAltResult>> {
        let series = dynamic_to_series("values", &values)?;
        Ok(Expr(
            e.0.clone().is_in(pl_lit(series).implode(false), false),
        ))
    }

    /// True where the string contains `pattern`, a regular expression (`str_contains("(?i)fsm")`).
    pub fn str_contains(e: &mut Expr, pattern: &str) -> Expr {
        Expr(
            e.0.clone()
                .str()
                .contains(pl_lit(pattern.to_string()), false),
        )
    }

    /// The length of a string in characters.
    pub fn str_len(e: &mut Expr) -> Expr {
        Expr(e.0.clone().str().len_chars())
    }

    /// Replaces every occurrence of the literal text `pattern` with `value`.
    ///
    /// ```rhai
    /// let df = from_records([#{code: "module RefModule; endmodule"}]);
    /// let df = df.with_column(col("code").str_replace_all("RefModule", "TopModule").alias("code"));
    /// assert_eq(df.row(0).code, "module TopModule; endmodule");
    /// ```
    pub fn str_replace_all(e: &mut Expr, pattern: &str, value: &str) -> Expr {
        Expr(e.0.clone().str().replace_all(
            pl_lit(pattern.to_string()),
            pl_lit(value.to_string()),
            true,
        ))
    }

    /// Rounds to `decimals` places (half away from zero).
    pub fn round(e: &mut Expr, decimals: i64) -> Expr {
        Expr(e.0.clone().round(
            decimals.clamp(0, 15) as u32,
            pl::RoundMode::HalfAwayFromZero,
        ))
    }

    /// Lower-cases a string column.
    pub fn str_to_lowercase(e: &mut Expr) -> Expr {
        Expr(e.0.clone().str().to_lowercase())
    }

    /// True where the value is null (missing in the JSONL row).
    pub fn is_null(e: &mut Expr) -> Expr {
        Expr(e.0.clone().is_null())
    }

    /// True where the value is not null.
    pub fn is_not_null(e: &mut Expr) -> Expr {
        Expr(e.0.clone().is_not_null())
    }

    /// Converts to float (for averaging booleans into rates, say).
    pub fn to_float(e: &mut Expr) -> Expr {
        Expr(e.0.clone().cast(pl::DataType::Float64))
    }

    /// The mean (in `agg`, per group).
    pub fn mean(e: &mut Expr) -> Expr {
        Expr(e.0.clone().mean())
    }

    /// The sum (in `agg`, per group).
    pub fn sum(e: &mut Expr) -> Expr {
        Expr(e.0.clone().sum())
    }

    /// The number of non-null values (in `agg`, per group).
    pub fn count(e: &mut Expr) -> Expr {
        Expr(e.0.clone().count())
    }

    /// The minimum (in `agg`, per group).
    pub fn min(e: &mut Expr) -> Expr {
        Expr(e.0.clone().min())
    }

    /// The maximum (in `agg`, per group).
    pub fn max(e: &mut Expr) -> Expr {
        Expr(e.0.clone().max())
    }

    /// The number of rows (in `agg`, per group): `len().alias("n")`.
    #[rhai_fn(name = "len")]
    pub fn len_rows() -> Expr {
        Expr(pl::len())
    }
}

pub fn exprs_from(values: &Array, what: &str) -> Result<Vec<PlExpr>, Box<EvalAltResult>> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            if v.is_string() {
                Ok(column(&v.to_string()))
            } else if let Some(e) = v.read_lock::<Expr>() {
                Ok(e.0.clone())
            } else {
                Err(format!(
                    "{what}[{i}] is a {}; expected a column name or col(...)",
                    v.type_name()
                )
                .into())
            }
        })
        .collect()
}

pub fn expr_from(value: &Dynamic) -> Result<PlExpr, Box<EvalAltResult>> {
    if value.is_string() {
        return Ok(column(&value.to_string()));
    }
    to_expr(value)
}

/// How an expression shows; it does not persist.
pub(crate) fn rich_type() -> rtlab_core::values::RichType {
    rtlab_core::values::RichType {
        tag: "expr",
        is: |v| v.is::<Expr>(),
        text: |v| {
            v.read_lock::<Expr>()
                .map(|e| format!("{:?}", e.0))
                .unwrap_or_default()
        },
        html: None,
        persist: None,
    }
}
