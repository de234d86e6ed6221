//! One process-wide cancellation flag: Ctrl-C sets it; Rhai's progress callback and every long stdlib
//! loop check it. At a REPL prompt rustyline reads Ctrl-C itself, so the flag only fires mid-evaluation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

static CANCEL: AtomicBool = AtomicBool::new(false);
static INSTALL: Once = Once::new();

/// True once Ctrl-C was pressed since the last [`clear_cancel`].
pub fn cancel_requested() -> bool {
    CANCEL.load(Ordering::Relaxed)
}

/// Sets the flag as Ctrl-C does: what a Jupyter `interrupt_request` calls. The running script stops
/// at its next step; its scope stays.
pub fn request_cancel() {
    CANCEL.store(true, Ordering::Relaxed);
}

/// Resets the flag before a new evaluation.
pub fn clear_cancel() {
    CANCEL.store(false, Ordering::Relaxed);
}

/// Routes SIGINT to the flag instead of killing the process. A second Ctrl-C while the first is still
/// pending exits with 130, so a stuck native call can always be left.
pub fn install_ctrl_c_handler() {
    INSTALL.call_once(|| {
        let _ = ctrlc::set_handler(|| {
            if CANCEL.swap(true, Ordering::Relaxed) {
                eprintln!("\ninterrupted twice: exiting");
                std::process::exit(130);
            }
        });
    });
}
