//! The Rhai package every script gets whatever it does: files relative to the script, sleeping that
//! Ctrl-C can interrupt, JSON, environment lookups (recorded as cell inputs) and assertions.

use crate::workspace::{write_atomic, Workspace};
use rhai::plugin::*;

pub fn register(module: &mut Module) {
    combine_with_exported_module!(module, "runtime_functions", runtime_functions);
}

#[export_module]
mod runtime_functions {
    use super::*;

    /// Sleeps for `seconds` (a float or an int). Ctrl-C interrupts it.
    ///
    /// ```rhai
    /// sleep(0.01);
    /// ```
    #[rhai_fn(name = "sleep", return_raw)]
    pub fn sleep_float(seconds: f64) -> Result<(), Box<EvalAltResult>> {
        let deadline =
            std::time::Instant::now() + std::time::Duration::from_secs_f64(seconds.max(0.0));
        while std::time::Instant::now() < deadline {
            if crate::cancel_requested() {
                return Err("cancelled by Ctrl-C".into());
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            std::thread::sleep(left.min(std::time::Duration::from_millis(20)));
        }
        Ok(())
    }

    /// Sleeps for `seconds`. Ctrl-C interrupts it.
    #[rhai_fn(name = "sleep", return_raw)]
    pub fn sleep_int(seconds: i64) -> Result<(), Box<EvalAltResult>> {
        sleep_float(seconds as f64)
    }

    /// Reads a UTF-8 text file; relative paths are relative to the script's directory.
    ///
    /// ```rhai
    /// write_text("/tmp/rtlab_doc_example.txt", "hello");
    /// assert_eq(read_text("/tmp/rtlab_doc_example.txt"), "hello");
    /// ```
    #[rhai_fn(return_raw)]
    pub fn read_text(ctx: NativeCallContext, path: &str) -> Result<String, Box<EvalAltResult>> {
        let full = Workspace::of(&ctx).resolve_input(path);
        std::fs::read_to_string(&full)
            .map_err(|e| format!("cannot read {}: {e}", full.display()).into())
    }

    /// Writes a text file atomically (temp file + rename), creating parent directories.
    #[rhai_fn(return_raw)]
    pub fn write_text(
        ctx: NativeCallContext,
        path: &str,
        text: &str,
    ) -> Result<(), Box<EvalAltResult>> {
        let full = Workspace::of(&ctx).resolve(path);
        write_atomic(&full, text.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", full.display()).into())
    }

    /// True when the path exists (relative to the script's directory).
    pub fn file_exists(ctx: NativeCallContext, path: &str) -> bool {
        Workspace::of(&ctx).resolve(path).exists()
    }

    /// This process's peak resident memory in MiB (Linux `VmHWM`), or `()` where unknown. For memory
    /// budgets in benchmarks: `print(peak_rss_mb())`.
    pub fn peak_rss_mb() -> Dynamic {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kb| Dynamic::from(kb / 1024.0))
            .unwrap_or(Dynamic::UNIT)
    }

    /// Parses JSON text into Rhai values (objects become maps, arrays arrays, null `()`); the error names
    /// the line and column.
    ///
    /// ```rhai
    /// let v = parse_json(`{"r": 64, "targets": ["q_proj", "v_proj"]}`);
    /// assert_eq(v.targets[1], "v_proj");
    /// ```
    #[rhai_fn(return_raw)]
    pub fn parse_json(text: &str) -> Result<Dynamic, Box<EvalAltResult>> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("parse_json: {e}"))?;
        Ok(crate::json::json_to_dynamic(value))
    }

    /// Writes any value (maps, arrays, numbers, strings, bools, `()`) as JSON text.
    ///
    /// ```rhai
    /// assert_eq(json([1, 2.5, "x", ()]), `[1,2.5,"x",null]`);
    /// ```
    #[rhai_fn(return_raw)]
    pub fn json(value: Dynamic) -> Result<String, Box<EvalAltResult>> {
        Ok(crate::json::dynamic_to_json(&value)
            .map_err(|e| format!("json: {e}"))?
            .to_string())
    }

    /// Shows a value now, in the middle of a cell: in Jupyter as rich output (a DataFrame as a
    /// table, a plot as SVG), elsewhere as its text on a line of its own. A cell's last value is
    /// shown anyway; `display` is for the values before it.
    ///
    /// ```rhai
    /// display(#{step: 1, loss: 0.5});
    /// ```
    pub fn display(ctx: NativeCallContext, value: Dynamic) {
        crate::Workspace::of(&ctx).display(&value);
    }

    /// The value of an environment variable, or `()` when unset. A cached cell that read it reruns
    /// when the value changes.
    ///
    /// ```rhai
    /// let home = env("HOME");
    /// assert(home != (), "HOME is set");
    /// ```
    pub fn env(ctx: NativeCallContext, name: &str) -> Dynamic {
        Workspace::of(&ctx).note_env(name);
        std::env::var(name)
            .map(Dynamic::from)
            .unwrap_or(Dynamic::UNIT)
    }

    /// Fails the script with `message` unless `a == b` (compared by their displayed values).
    ///
    /// ```rhai
    /// assert_eq(1 + 1, 2);
    /// ```
    #[rhai_fn(return_raw)]
    pub fn assert_eq(a: Dynamic, b: Dynamic) -> Result<(), Box<EvalAltResult>> {
        let (x, y) = (crate::display_value(&a), crate::display_value(&b));
        if x == y {
            Ok(())
        } else {
            Err(format!("assertion failed: {x} != {y}").into())
        }
    }

    /// Fails the script with `message` unless `condition` is true.
    ///
    /// ```rhai
    /// assert(2 > 1, "two is more than one");
    /// ```
    #[rhai_fn(name = "assert", return_raw)]
    pub fn assert_msg(condition: bool, message: &str) -> Result<(), Box<EvalAltResult>> {
        if condition {
            Ok(())
        } else {
            Err(format!("assertion failed: {message}").into())
        }
    }
}
