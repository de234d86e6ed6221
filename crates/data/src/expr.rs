//! Column paths as polars expressions: what the scans, the readers and the Rhai `Expr`
//! ([`crate::api`]) share.

use polars::prelude::{col as pl_col, Expr as PlExpr};

/// `col("a.b.c")`: a column, reaching into struct fields along the dots.
pub fn column(path: &str) -> PlExpr {
    let mut parts = path.split('.');
    let mut e = pl_col(parts.next().unwrap_or(path));
    for field in parts {
        e = e.struct_().field_by_name(field);
    }
    e
}
