//! `rtlab report`: a script rendered as a notebook (each cell's code, what it printed, its value), as
//! self-contained HTML or Markdown, readable without rtlab. Tables render as tables, SVG plots inline.

use super::runner::CellReport;
use rtlab_core::display::escape_html as escape;

fn status_text(r: &CellReport) -> String {
    super::runner::status_line(r)
}

pub fn render_html(title: &str, cells: &[CellReport]) -> String {
    let mut html = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title>\n<style>\n\
body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}}\n\
.cell{{border-left:3px solid #4a7;margin:1.5rem 0;padding-left:1rem}}\n\
.status{{color:#777;font-size:.85rem}}\npre{{background:#f6f8fa;padding:.6rem;overflow-x:auto}}\n\
pre.out{{background:#fff;border:1px solid #eee}}\ntable{{border-collapse:collapse;font-size:.85rem}}\n\
td,th{{border:1px solid #ddd;padding:.2rem .5rem;text-align:left;vertical-align:top}}\n\
.shape{{color:#777;font-size:.8rem}}\n</style></head><body>\n<h1>{t}</h1>\n",
        t = escape(title)
    );
    for r in cells {
        html.push_str("<div class=\"cell\">\n");
        html.push_str(&format!(
            "<div class=\"status\">{}</div>\n",
            escape(&status_text(r))
        ));
        html.push_str(&format!(
            "<pre><code>{}</code></pre>\n",
            escape(r.cell.code.trim_end())
        ));
        let printed = strip_result(&r.printed, r.result_text.as_deref());
        if !printed.trim().is_empty() {
            html.push_str(&format!(
                "<pre class=\"out\">{}</pre>\n",
                escape(printed.trim_end())
            ));
        }
        if let Some(h) = &r.result_html {
            html.push_str(h);
            html.push('\n');
        }
        html.push_str("</div>\n");
    }
    html.push_str("</body></html>\n");
    html
}

pub fn render_markdown(title: &str, cells: &[CellReport]) -> String {
    let mut md = format!("# {title}\n\n");
    for r in cells {
        md.push_str(&format!(
            "## Cell {}\n\n_{}_\n\n```rhai\n{}\n```\n\n",
            r.cell.label(),
            status_text(r),
            r.cell.code.trim_end()
        ));
        let printed = strip_result(&r.printed, None);
        if !printed.trim().is_empty() {
            md.push_str(&format!("```text\n{}\n```\n\n", printed.trim_end()));
        }
        if let Some(h) = &r.result_html {
            if h.starts_with("<svg") || h.starts_with("<table") {
                md.push_str(h);
                md.push_str("\n\n");
            }
        }
    }
    md
}

/// The printed text without the trailing display of the cell's value (shown separately in HTML).
fn strip_result<'a>(printed: &'a str, result: Option<&str>) -> &'a str {
    match result {
        Some(r) => printed
            .trim_end()
            .strip_suffix(r.trim_end())
            .unwrap_or(printed),
        None => printed,
    }
}
