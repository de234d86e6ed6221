//! Differential testbenches, for when a reference module is all there is: drive the reference
//! (`RefModule`) and the design (`TopModule`) with the same stimulus and compare every output every
//! cycle after reset, printing VerilogEval's `Mismatches: N in M samples`.
//!
//! Clock and reset are found from port names: a 1-bit input called clk/clock (any case, `i_`/`_i`
//! affixes allowed) is the clock; rst/reset/areset/... is the reset, active low when its name ends in
//! `n`/`_n`/`_b` or starts with `n`. Stimulus: corner cases (all zeros, all ones, alternating bits)
//! then seeded random values; the reset pulses again now and then to exercise it. An output bit that is
//! `x` in the reference is a don't-care, as in VerilogEval's testbenches.

use super::yosys::Port;

fn stem(name: &str) -> String {
    let lower = name.to_lowercase();
    let lower = lower.strip_prefix("i_").unwrap_or(&lower).to_string();
    lower.strip_suffix("_i").unwrap_or(&lower).to_string()
}

pub fn is_clock(p: &Port) -> bool {
    p.input
        && p.width == 1
        && matches!(
            stem(&p.name).as_str(),
            "clk" | "clock" | "clk_in" | "aclk" | "sys_clk" | "clkin"
        )
}

/// Some(active_low) when the port is a reset.
pub fn reset_polarity(p: &Port) -> Option<bool> {
    if !p.input || p.width != 1 {
        return None;
    }
    let s = stem(&p.name);
    let names = [
        "rst", "reset", "areset", "arst", "srst", "sreset", "rstn", "rst_n", "resetn", "reset_n",
        "arst_n", "aresetn", "areset_n", "nrst", "nreset", "rst_b", "reset_b",
    ];
    if !names.contains(&s.as_str()) {
        return None;
    }
    Some(s.ends_with('n') && !s.ends_with("reset") || s.ends_with("_b") || s.starts_with('n'))
}

/// Random bits for a port of `width`, as a Verilog expression using the seeded `$random(seed)`.
fn random_expr(width: usize) -> String {
    let words = width.div_ceil(32);
    if words == 1 {
        "$random(seed)".to_string()
    } else {
        format!("{{{}}}", vec!["$random(seed)"; words].join(", "))
    }
}

/// The values data inputs take in one cycle: the three corner cases, then random.
#[derive(Clone, Copy)]
enum Stimulus {
    Zeros,
    Ones,
    Alternate,
    Random,
}

/// The ports as the testbench uses them.
struct Roles<'a> {
    all: &'a [Port],
    clock: Option<&'a Port>,
    /// The reset, and whether it is active low.
    reset: Option<(&'a Port, bool)>,
    /// Inputs other than the clock and the reset.
    data_inputs: Vec<&'a Port>,
    outputs: Vec<&'a Port>,
}

impl<'a> Roles<'a> {
    fn of(ports: &'a [Port]) -> Roles<'a> {
        let clock = ports.iter().find(|p| is_clock(p));
        let reset = ports
            .iter()
            .find_map(|p| reset_polarity(p).map(|low| (p, low)));
        let data_inputs = ports
            .iter()
            .filter(|p| p.input && Some(*p) != clock && reset.map(|r| r.0) != Some(*p))
            .collect();
        let outputs = ports.iter().filter(|p| !p.input).collect();
        Roles {
            all: ports,
            clock,
            reset,
            data_inputs,
            outputs,
        }
    }

    /// Assignments of every data input for one cycle.
    fn set_inputs(&self, stimulus: Stimulus) -> String {
        self.data_inputs
            .iter()
            .map(|p| {
                let v = match stimulus {
                    Stimulus::Random => random_expr(p.width),
                    Stimulus::Zeros => "0".to_string(),
                    Stimulus::Ones => format!("{{{}{{1'b1}}}}", p.width),
                    Stimulus::Alternate => format!("{{{}{{2'b10}}}}", p.width.div_ceil(2)),
                };
                format!("{} = {v}; ", p.name)
            })
            .collect()
    }

    /// The statements that assert and release the reset (empty without one).
    fn reset_on_off(&self) -> (String, String) {
        match self.reset {
            Some((p, true)) => (format!("{} = 0;", p.name), format!("{} = 1;", p.name)),
            Some((p, false)) => (format!("{} = 1;", p.name), format!("{} = 0;", p.name)),
            None => (String::new(), String::new()),
        }
    }

    /// One cycle's inputs: zeros, ones, alternating bits, then random.
    fn cycle_inputs(&self) -> String {
        format!(
            "      if (cycle == 0) begin {} end\n      else if (cycle == 1) begin {} end\n      else if (cycle == 2) begin {} end\n      else begin {} end\n",
            self.set_inputs(Stimulus::Zeros),
            self.set_inputs(Stimulus::Ones),
            self.set_inputs(Stimulus::Alternate),
            self.set_inputs(Stimulus::Random)
        )
    }
}

/// The testbench text. `cycles` random cycles follow the corner cases.
pub fn generate(ports: &[Port], cycles: usize, seed: u32) -> String {
    let roles = Roles::of(ports);
    let mut tb = String::from("`timescale 1ns/1ps\nmodule tb;\n");
    declare(&mut tb, &roles, seed);
    compare_task(&mut tb, &roles.outputs);
    tb.push_str("  initial begin\n");
    match roles.clock {
        Some(clock) => clocked_stimulus(&mut tb, &roles, &clock.name, cycles),
        None => combinational_stimulus(&mut tb, &roles, cycles),
    }
    tb.push_str("    $display(\"Mismatches: %0d in %0d samples\", mismatches, samples);\n    $finish;\n  end\nendmodule\n");
    tb
}

/// The counters, a reg per input, a ref/dut wire pair per output, and both instances.
fn declare(tb: &mut String, roles: &Roles, seed: u32) {
    let decl = |p: &Port| {
        if p.width == 1 {
            String::new()
        } else {
            format!("[{}:0] ", p.width - 1)
        }
    };
    tb.push_str(&format!("  integer seed = {seed};\n  integer mismatches = 0;\n  integer samples = 0;\n  integer cycle;\n"));
    for p in roles.all.iter().filter(|p| p.input) {
        tb.push_str(&format!("  reg {}{} = 0;\n", decl(p), p.name));
    }
    for p in &roles.outputs {
        tb.push_str(&format!(
            "  wire {}{}_ref, {}_dut;\n",
            decl(p),
            p.name,
            p.name
        ));
    }
    let conns = |suffix: &str| {
        roles
            .all
            .iter()
            .map(|p| {
                if p.input {
                    format!(".{0}({0})", p.name)
                } else {
                    format!(".{0}({0}_{suffix})", p.name)
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    tb.push_str(&format!("  RefModule ref_inst ({});\n", conns("ref")));
    tb.push_str(&format!("  TopModule dut_inst ({});\n", conns("dut")));
}

/// The compare task: an x bit in the reference matches anything.
fn compare_task(tb: &mut String, outputs: &[&Port]) {
    tb.push_str("  task compare;\n    begin\n      samples = samples + 1;\n");
    for p in outputs {
        let n = &p.name;
        tb.push_str(&format!(
            "      if ({n}_ref !== ({n}_ref ^ {n}_dut ^ {n}_ref)) begin\n        if (mismatches < 5) $display(\"mismatch at sample %0d: {n} ref=%h dut=%h\", samples, {n}_ref, {n}_dut);\n        mismatches = mismatches + 1;\n      end\n"
        ));
    }
    tb.push_str("    end\n  endtask\n");
}

/// Sequential: inputs change on the falling edge, outputs are compared just before it.
fn clocked_stimulus(tb: &mut String, roles: &Roles, c: &str, cycles: usize) {
    let (reset_on, reset_off) = roles.reset_on_off();
    tb.push_str(&format!(
        "    {c} = 0;\n    {reset_on} {}\n",
        roles.set_inputs(Stimulus::Zeros)
    ));
    tb.push_str(&format!(
        "    repeat (2) begin #5 {c} = 1; #5 {c} = 0; end\n    {reset_off}\n"
    ));
    tb.push_str(&format!(
        "    for (cycle = 0; cycle < {}; cycle = cycle + 1) begin\n",
        cycles + 3
    ));
    tb.push_str(&roles.cycle_inputs());
    if roles.reset.is_some() {
        // Now and then a reset pulse, so reset behaviour is compared too.
        // Rare enough that counters get far between pulses.
        tb.push_str(&format!("      if (cycle > 3 && ($random(seed) & 511) == 0) begin {reset_on} end else begin {reset_off} end\n"));
    }
    // Compare twice a cycle: after the inputs settle (Mealy outputs see the new inputs) and after
    // the rising edge (the new state).
    tb.push_str(&format!(
        "      #4 compare; #1 {c} = 1; #4 compare; #1 {c} = 0;\n    end\n"
    ));
}

/// Combinational (or clockless): apply, let it settle, compare.
fn combinational_stimulus(tb: &mut String, roles: &Roles, cycles: usize) {
    let (_, reset_off) = roles.reset_on_off();
    tb.push_str(&format!("    {reset_off}\n"));
    tb.push_str(&format!(
        "    for (cycle = 0; cycle < {}; cycle = cycle + 1) begin\n",
        cycles + 3
    ));
    tb.push_str(&roles.cycle_inputs());
    tb.push_str("      #5 compare; #5;\n    end\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(name: &str, input: bool, width: usize) -> Port {
        Port {
            name: name.to_string(),
            input,
            width,
        }
    }

    #[test]
    fn clocks_and_resets_are_found_by_name() {
        assert!(is_clock(&port("clk", true, 1)));
        assert!(is_clock(&port("i_CLK", true, 1)));
        assert!(!is_clock(&port("clk", true, 2)));
        assert_eq!(reset_polarity(&port("rst_n", true, 1)), Some(true));
        assert_eq!(reset_polarity(&port("areset", true, 1)), Some(false));
        assert_eq!(reset_polarity(&port("reset", true, 1)), Some(false));
        assert_eq!(reset_polarity(&port("resetn", true, 1)), Some(true));
        assert_eq!(reset_polarity(&port("data", true, 1)), None);
    }

    #[test]
    fn the_testbench_instantiates_both_and_prints_the_verilogeval_line() {
        let tb = generate(
            &[
                port("clk", true, 1),
                port("reset", true, 1),
                port("d", true, 40),
                port("q", false, 8),
            ],
            100,
            1,
        );
        assert!(tb.contains("RefModule ref_inst (.clk(clk), .reset(reset), .d(d), .q(q_ref));"));
        assert!(tb.contains("TopModule dut_inst"));
        assert!(
            tb.contains("d = {$random(seed), $random(seed)};"),
            "40 bits need two words"
        );
        assert!(tb.contains("Mismatches: %0d in %0d samples"));
    }
}
