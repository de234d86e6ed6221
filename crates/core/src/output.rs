//! The output sink: everything a script prints goes here, so the REPL, `rtlab run`, the cell cache (a
//! cached cell replays its output) and `rtlab report` all see the same text.

use std::cell::RefCell;
use std::io::Write;
use std::rc::Rc;

/// Cheap to clone; clones share the same buffer.
#[derive(Clone, Default)]
pub struct OutputSink {
    inner: Rc<RefCell<SinkState>>,
}

/// Called with each printed line.
pub type LineListener = Rc<dyn Fn(&str)>;
/// Shows a value mid-cell.
pub type ValueDisplay = Rc<dyn Fn(&rhai::Dynamic)>;

#[derive(Default)]
struct SinkState {
    /// Text captured since the last [`OutputSink::take_capture`].
    captured: String,
    /// When false, lines are only captured (used by `rtlab report`, which prints nothing itself).
    quiet: bool,
    /// Called with each line as it is printed (the Jupyter kernel streams them to the notebook).
    listener: Option<LineListener>,
    /// Shows a value mid-cell (`display(value)`): the Jupyter kernel sends it as rich output.
    display: Option<ValueDisplay>,
}

impl OutputSink {
    /// A sink that prints to stdout and captures what it printed.
    pub fn new() -> OutputSink {
        OutputSink::default()
    }

    /// Writes one line to stdout (unless quiet) and to the capture buffer.
    pub fn line(&self, text: &str) {
        let mut state = self.inner.borrow_mut();
        if !state.quiet {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{text}");
            let _ = out.flush();
        }
        state.captured.push_str(text);
        state.captured.push('\n');
        let listener = state.listener.clone();
        drop(state);
        if let Some(listen) = listener {
            listen(text);
        }
    }

    /// Shows a value now, mid-cell: as rich output where a host installed a display (the Jupyter
    /// kernel), else as the value's text on a line of its own.
    pub fn display(&self, value: &rhai::Dynamic) {
        let display = self.inner.borrow().display.clone();
        match display {
            Some(show) => show(value),
            None => self.line(&crate::display::display_value(value)),
        }
    }

    /// Installs how `display(value)` shows a value (None: as text).
    pub fn set_display(&self, display: Option<ValueDisplay>) {
        self.inner.borrow_mut().display = display;
    }

    /// Calls `listener` with every line printed from now on, as it is printed.
    pub fn set_listener(&self, listener: Option<LineListener>) {
        self.inner.borrow_mut().listener = listener;
    }

    /// Replays text captured earlier (a cached cell's output) as if it were printed now.
    pub fn replay(&self, text: &str) {
        for line in text.lines() {
            self.line(line);
        }
    }

    /// Returns and clears what was printed since the last call.
    pub fn take_capture(&self) -> String {
        std::mem::take(&mut self.inner.borrow_mut().captured)
    }

    pub fn set_quiet(&self, quiet: bool) {
        self.inner.borrow_mut().quiet = quiet;
    }
}
