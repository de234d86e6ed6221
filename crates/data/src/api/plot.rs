//! The Rhai surface of plots: `df.plot_bar`, `df.plot_line`, `.svg()`, `.save(path)`, and how a
//! plot shows and persists ([`crate::plot`] draws them).

use crate::plot::{Kind, Plot};
use crate::Frame;
use rhai::plugin::*;
use rtlab_core::values::{Persist, RichType};

/// Reads the x labels and y values of a frame.
fn xy(frame: &Frame, x: &str, y: &str) -> Result<(Vec<String>, Vec<f64>), Box<EvalAltResult>> {
    use polars::prelude::*;
    let df = frame
        .df
        .clone()
        .lazy()
        .select([
            crate::column(x).cast(DataType::String).alias("x"),
            crate::column(y).cast(DataType::Float64).alias("y"),
        ])
        .collect()
        .map_err(|e| format!("plot: {e}"))?;
    let xs = df
        .column("x")
        .and_then(|c| c.str().cloned())
        .map_err(|e| format!("plot: {e}"))?;
    let ys = df
        .column("y")
        .and_then(|c| c.f64().cloned())
        .map_err(|e| format!("plot: {e}"))?;
    let labels = xs.iter().map(|v| v.unwrap_or("null").to_string()).collect();
    let values = ys.iter().map(|v| v.unwrap_or(f64::NAN)).collect();
    Ok((labels, values))
}

pub fn register(module: &mut Module) {
    module.set_custom_type::<Plot>("Plot");
    FuncRegistration::new("to_string").set_into_module(module, |p: &mut Plot| p.unicode());
    FuncRegistration::new("to_debug").set_into_module(module, |p: &mut Plot| p.unicode());
    combine_with_exported_module!(module, "plot_functions", plot_functions);
}

#[export_module]
mod plot_functions {
    use super::*;

    /// A bar chart of column `y` against the labels in column `x` (one bar per row, in row order).
    ///
    /// ```rhai
    /// let t = from_records([#{category: "fsm", n: 35}, #{category: "alu", n: 20}]);
    /// let p = t.plot_bar("category", "n");
    /// assert(p.svg().contains("<svg"), "an SVG document");
    /// ```
    #[rhai_fn(return_raw)]
    pub fn plot_bar(frame: &mut Frame, x: &str, y: &str) -> Result<Plot, Box<EvalAltResult>> {
        let (labels, values) = xy(frame, x, y)?;
        Ok(Plot::new(Kind::Bar, format!("{y} by {x}"), labels, values))
    }

    /// A line chart of column `y` over column `x` (a loss curve, say), in row order.
    #[rhai_fn(return_raw)]
    pub fn plot_line(frame: &mut Frame, x: &str, y: &str) -> Result<Plot, Box<EvalAltResult>> {
        let (labels, values) = xy(frame, x, y)?;
        Ok(Plot::new(
            Kind::Line,
            format!("{y} over {x}"),
            labels,
            values,
        ))
    }

    /// The chart's SVG text.
    pub fn svg(plot: &mut Plot) -> String {
        plot.svg.clone()
    }

    /// Writes the chart as an SVG file, atomically.
    #[rhai_fn(return_raw)]
    pub fn save(
        ctx: NativeCallContext,
        plot: &mut Plot,
        path: &str,
    ) -> Result<(), Box<EvalAltResult>> {
        let full = rtlab_core::Workspace::of(&ctx).resolve(path);
        rtlab_core::workspace::write_atomic(&full, plot.svg.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", full.display()).into())
    }
}

/// How a plot shows (SVG in reports) and persists.
pub(crate) fn rich_type() -> RichType {
    RichType {
        tag: "plot",
        is: |v| v.is::<Plot>(),
        text: |v| {
            v.read_lock::<Plot>()
                .map(|p| p.unicode())
                .unwrap_or_default()
        },
        html: Some(|v| {
            v.read_lock::<Plot>()
                .map(|p| p.svg.clone())
                .unwrap_or_default()
        }),
        persist: Some(Persist {
            save: |v, _| {
                v.read_lock::<Plot>()
                    .map(|p| p.to_json())
                    .ok_or_else(|| "a plot that is locked".into())
            },
            load: |fields, _| Ok(Dynamic::from(Plot::from_json(fields))),
        }),
    }
}
