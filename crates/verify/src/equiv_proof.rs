//! The `equiv` stage's quick proof: k-induction from two short Yosys runs, tried before the stage's
//! own `sat -tempinduct`, which took 29 s to prove a 4-bit accumulator equal to its reference (its
//! induction closed at length 10, each SAT call slow on the adders; this proof takes about 0.1 s).
//!
//! - **Base case**: the stage's miter (the outputs of the two modules compared, `x` in the
//!   reference a don't-care), checked by `sat -seq` for the first [`DEPTH`] + 1 cycles from the
//!   all-zero state, as the stage's own proof starts.
//! - **Induction step**: Yosys's equivalence flow with only the ports matched (`rename -hide` makes
//!   every other signal private, so `equiv_make` pairs ports alone): `equiv_simple`, then
//!   `equiv_induct -seq` [`DEPTH`], which proves the outputs equal in a cycle from *any* state in
//!   which they were equal for the cycles before it.
//!
//! Both together prove the outputs equal in every cycle. Matching only the ports matters: matched
//! internal signals would join the induction's hypothesis without a base case of their own. When
//! either run fails, this proves nothing and the stage's own proof decides (`equivalent`,
//! `different` or `unknown`), so the quick proof can only make an `equivalent` come sooner.

use crate::process::{run_tool, Limits, Outcome};
use std::path::Path;

/// Cycles the base case checks and the induction assumes.
const DEPTH: usize = 20;

/// The Yosys script that reads the two modules (`eq_ref.sv` with `RefModule`, `eq_dut.sv` with
/// `TopModule`), builds their miter and has `sat` prove its `trigger` never rises from the all-zero
/// state, with `options` (`-seq N`, `-tempinduct ...`): the stage's own proof and the quick proof's
/// base case run on the same miter.
pub(crate) fn sat_on_miter(options: &str) -> String {
    format!(
        "read_verilog -sv eq_ref.sv eq_dut.sv; proc; opt_clean; \
         miter -equiv -flatten -make_outputs -ignore_gold_x RefModule TopModule miter; hierarchy -top miter; flatten; opt; \
         sat -verify -prove trigger 0 -set-init-zero {options} miter"
    )
}

/// The milliseconds both runs took when they prove the design equivalent to the reference (in
/// `dir`, as the stage wrote them); None when either fails, times out or cannot run.
pub(crate) fn prove(dir: &Path, limits: Limits) -> Option<f64> {
    // One cycle more than the induction assumes, whichever way `equiv_induct` counts its window.
    let base_case = sat_on_miter(&format!("-seq {}", DEPTH + 1));
    let base = run_tool("yosys", &["-p", &base_case], dir, limits);
    if !base.ok() {
        return None;
    }
    let induction = format!(
        "read_verilog -sv eq_ref.sv eq_dut.sv; proc; opt_clean; flatten; opt; rename -hide w:*; \
         equiv_make RefModule TopModule equiv; hierarchy -top equiv; \
         equiv_simple -seq 5; equiv_induct -seq {DEPTH}; equiv_status -assert"
    );
    let step = run_tool("yosys", &["-p", &induction], dir, limits);
    step.ok().then(|| ms(&base) + ms(&step))
}

fn ms(o: &Outcome) -> f64 {
    (o.elapsed.as_secs_f64() * 1e4).round() / 10.0
}
