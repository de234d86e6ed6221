//! Plots: `df.plot_bar(x, y)` and `df.plot_line(x, y)` give a `Plot` whose SVG goes inline in
//! `rtlab report` and to `.save(path)`, and which the REPL shows as a compact unicode chart.
//!
//! The SVG is written directly rather than through plotters: plotters needs a font backend (fontconfig
//! and freetype, or an embedded TTF) just to measure text, while SVG `<text>` lets the viewer do fonts.
//! Output is deterministic, so snapshots and cache keys are stable.

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 360.0;
const MARGIN_LEFT: f64 = 60.0;
const MARGIN_BOTTOM: f64 = 70.0;
const MARGIN_TOP: f64 = 30.0;
const MARGIN_RIGHT: f64 = 20.0;

#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    Bar,
    Line,
}

/// A chart: its data (for the unicode view) and its SVG.
#[derive(Clone, Debug)]
pub struct Plot {
    pub kind: Kind,
    pub title: String,
    pub labels: Vec<String>,
    pub values: Vec<f64>,
    pub svg: String,
}

impl Plot {
    /// The fields a plot persists as: what it shows, not its rendering, which is redrawn on load. Values
    /// are strings so that NaN and the infinities survive JSON.
    pub(crate) fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
        let kind = if self.kind == Kind::Bar {
            "bar"
        } else {
            "line"
        };
        let values: Vec<String> = self.values.iter().map(f64::to_string).collect();
        let mut fields = serde_json::Map::new();
        fields.insert("kind".into(), kind.into());
        fields.insert("title".into(), self.title.clone().into());
        fields.insert("labels".into(), self.labels.clone().into());
        fields.insert("values".into(), values.into());
        fields
    }

    pub(crate) fn from_json(fields: &serde_json::Map<String, serde_json::Value>) -> Plot {
        use serde_json::Value;
        let kind = if fields.get("kind").and_then(Value::as_str) == Some("bar") {
            Kind::Bar
        } else {
            Kind::Line
        };
        let title = fields
            .get("title")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let items = |key: &str| {
            fields
                .get(key)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        };
        let labels = items("labels")
            .iter()
            .map(|v| v.as_str().unwrap_or_default().to_string())
            .collect();
        let values = items("values")
            .iter()
            .map(|v| v.as_str().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN))
            .collect();
        Plot::new(kind, title, labels, values)
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 1000.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

impl Plot {
    pub fn new(kind: Kind, title: String, labels: Vec<String>, values: Vec<f64>) -> Plot {
        let svg = render_svg(&kind, &title, &labels, &values);
        Plot {
            kind,
            title,
            labels,
            values,
            svg,
        }
    }

    /// A terminal rendering: one bar per row for bar charts, a sparkline for line charts.
    pub fn unicode(&self) -> String {
        let max = self.values.iter().cloned().fold(0.0_f64, f64::max);
        let min = self.values.iter().cloned().fold(f64::INFINITY, f64::min);
        let mut out = format!("{}\n", self.title);
        match self.kind {
            Kind::Bar => {
                let width = self
                    .labels
                    .iter()
                    .map(|l| l.chars().count())
                    .max()
                    .unwrap_or(0)
                    .min(24);
                for (l, v) in self.labels.iter().zip(&self.values) {
                    let n = if max > 0.0 {
                        ((v / max) * 40.0).round() as usize
                    } else {
                        0
                    };
                    let label: String = l.chars().take(24).collect();
                    out.push_str(&format!(
                        "{label:>width$} │{} {}\n",
                        "█".repeat(n),
                        fmt_num(*v)
                    ));
                }
            }
            Kind::Line => {
                const TICKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
                let span = (max - min).max(f64::EPSILON);
                let line: String = self
                    .values
                    .iter()
                    .map(|v| TICKS[(((v - min) / span) * 7.0).round() as usize])
                    .collect();
                out.push_str(&format!(
                    "{line}\nmin {} · max {} · {} points\n",
                    fmt_num(min),
                    fmt_num(max),
                    self.values.len()
                ));
            }
        }
        out.trim_end().to_string()
    }
}

/// The plot as an SVG document: title, axes with a value grid, and the bars or the line.
fn render_svg(kind: &Kind, title: &str, labels: &[String], values: &[f64]) -> String {
    let plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
    let plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM;
    let max = values.iter().cloned().fold(0.0_f64, f64::max);
    let min = values.iter().cloned().fold(0.0_f64, f64::min);
    let span = (max - min).max(f64::EPSILON);
    let y_of = |v: f64| MARGIN_TOP + plot_h - (v - min) / span * plot_h;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-family=\"sans-serif\" font-size=\"11\">\n\
<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{}\" y=\"18\" text-anchor=\"middle\" font-size=\"14\">{}</text>\n",
        WIDTH / 2.0,
        escape(title)
    );
    svg.push_str(&axes_svg(min, span, plot_h, &y_of));
    let n = values.len().max(1) as f64;
    let step = plot_w / n;
    // Label every k-th point so x labels never overlap.
    let every = ((n * 40.0 / plot_w).ceil() as usize).max(1);
    match kind {
        Kind::Bar => {
            for (i, (l, v)) in labels.iter().zip(values).enumerate() {
                let x = MARGIN_LEFT + step * i as f64 + step * 0.15;
                let (top, bottom) = (y_of(v.max(0.0)), y_of(v.min(0.0)));
                svg.push_str(&format!(
                    "<rect x=\"{x:.1}\" y=\"{top:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#4a7fb5\"><title>{}: {}</title></rect>\n",
                    step * 0.7,
                    (bottom - top).max(0.5),
                    escape(l),
                    fmt_num(*v)
                ));
                if i % every == 0 {
                    svg.push_str(&label_svg(
                        MARGIN_LEFT + step * (i as f64 + 0.5),
                        MARGIN_TOP + plot_h + 12.0,
                        l,
                    ));
                }
            }
        }
        Kind::Line => {
            let points: Vec<String> = values
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    format!(
                        "{:.1},{:.1}",
                        MARGIN_LEFT + step * (i as f64 + 0.5),
                        y_of(*v)
                    )
                })
                .collect();
            svg.push_str(&format!(
                "<polyline fill=\"none\" stroke=\"#c0392b\" stroke-width=\"2\" points=\"{}\"/>\n",
                points.join(" ")
            ));
            for (i, l) in labels.iter().enumerate().filter(|(i, _)| i % every == 0) {
                svg.push_str(&label_svg(
                    MARGIN_LEFT + step * (i as f64 + 0.5),
                    MARGIN_TOP + plot_h + 12.0,
                    l,
                ));
            }
        }
    }
    svg.push_str("</svg>\n");
    svg
}

/// The axes, and 5 horizontal grid lines with their values.
fn axes_svg(min: f64, span: f64, plot_h: f64, y_of: &dyn Fn(f64) -> f64) -> String {
    let mut svg = String::new();
    for i in 0..=4 {
        let v = min + span * i as f64 / 4.0;
        let y = y_of(v);
        svg.push_str(&format!(
            "<line x1=\"{MARGIN_LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#e5e5e5\"/>\n<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n",
            WIDTH - MARGIN_RIGHT,
            MARGIN_LEFT - 6.0,
            y + 4.0,
            fmt_num(v)
        ));
    }
    svg.push_str(&format!(
        "<line x1=\"{MARGIN_LEFT}\" y1=\"{MARGIN_TOP}\" x2=\"{MARGIN_LEFT}\" y2=\"{:.1}\" stroke=\"#333\"/>\n<line x1=\"{MARGIN_LEFT}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#333\"/>\n",
        MARGIN_TOP + plot_h,
        MARGIN_TOP + plot_h,
        WIDTH - MARGIN_RIGHT,
        MARGIN_TOP + plot_h
    ));
    svg
}

fn label_svg(x: f64, y: f64, label: &str) -> String {
    let short: String = label.chars().take(18).collect();
    format!("<text x=\"{x:.1}\" y=\"{y:.1}\" text-anchor=\"end\" transform=\"rotate(-40 {x:.1} {y:.1})\">{}</text>\n", escape(&short))
}
