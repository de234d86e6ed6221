//! How values look in the REPL and in notebook output: rtlab's own types as they registered (DataFrames
//! as polars tables), maps and arrays
//! pretty-printed (inline when short, one entry a line when long), strings quoted, `()` hidden.

use rhai::{Array, Dynamic, Map};

/// Width under which a map or array is shown on one line.
const INLINE_WIDTH: usize = 80;

/// The text shown for a value at the REPL prompt or as a cell's result.
pub fn display_value(value: &Dynamic) -> String {
    if let Some(rich) = crate::values::rich_type_of(value) {
        return (rich.text)(value);
    }
    pretty(value, 0)
}

fn pretty(value: &Dynamic, indent: usize) -> String {
    let inline = inline(value);
    if inline.len() + indent <= INLINE_WIDTH || !(value.is_array() || value.is_map()) {
        return inline;
    }
    let pad = "  ".repeat(indent + 1);
    let close = "  ".repeat(indent);
    if value.is_array() {
        let arr = value.read_lock::<Array>().expect("checked is_array");
        let items: Vec<String> = arr
            .iter()
            .map(|v| format!("{pad}{},", pretty(v, indent + 1)))
            .collect();
        format!("[\n{}\n{close}]", items.join("\n"))
    } else {
        let map = value.read_lock::<Map>().expect("checked is_map");
        let items: Vec<String> = map
            .iter()
            .map(|(k, v)| format!("{pad}{}: {},", key(k), pretty(v, indent + 1)))
            .collect();
        format!("#{{\n{}\n{close}}}", items.join("\n"))
    }
}

fn inline(value: &Dynamic) -> String {
    if value.is_string() {
        return format!("{:?}", value.clone().into_string().unwrap_or_default());
    }
    if value.is_array() {
        let arr = value.read_lock::<Array>().expect("checked is_array");
        let items: Vec<String> = arr.iter().map(inline).collect();
        return format!("[{}]", items.join(", "));
    }
    if value.is_map() {
        let map = value.read_lock::<Map>().expect("checked is_map");
        let items: Vec<String> = map
            .iter()
            .map(|(k, v)| format!("{}: {}", key(k), inline(v)))
            .collect();
        return format!("#{{{}}}", items.join(", "));
    }
    if value.is_float() {
        let f = value.as_float().unwrap_or_default();
        // Rhai prints 1.0 as "1.0"; keep that so floats and ints stay distinguishable.
        return format!("{f:?}");
    }
    if let Some(rich) = crate::values::rich_type_of(value) {
        // A DataFrame nested in a map: a one-line summary, the table is too wide to inline.
        return (rich.text)(value)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
    }
    if value.is_variant() {
        // A native value with no registered display: its type's name, as a script's `type_of` has
        // it, not the Rust path (`GroupBy`, not `rtlab_data::frame_fns::GroupBy`).
        let path = value.type_name();
        return format!("<{}>", path.rsplit("::").next().unwrap_or(path));
    }
    value.to_string()
}

fn key(k: &str) -> String {
    if !k.is_empty()
        && k.chars().all(|c| c.is_alphanumeric() || c == '_')
        && !k.starts_with(|c: char| c.is_ascii_digit())
    {
        k.to_string()
    } else {
        format!("{k:?}")
    }
}

/// Text made safe to put in HTML.
pub fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The HTML of a cell's value: as its type registered it (a DataFrame as a table, a plot as SVG), anything
/// else as text.
pub fn value_html(value: &Dynamic) -> String {
    if let Some(html) = crate::values::rich_type_of(value).and_then(|rich| rich.html) {
        return html(value);
    }
    format!("<pre>{}</pre>", escape_html(&display_value(value)))
}
