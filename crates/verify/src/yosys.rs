//! The light Yosys pass and what we read from its JSON netlist: the top module's ports, outputs with
//! undriven bits, and inputs outside every output's cone (the "all I/O used" check).
//!
//! Reading the netlist in Rust, rather than grepping Yosys' log, makes the walk exact: backward from the
//! output bits and the state elements through every cell (after `flatten` and `memory_collect`).

use crate::VerifyError;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};

/// A port of the top module.
#[derive(Debug, Clone, PartialEq)]
pub struct Port {
    pub name: String,
    pub input: bool,
    pub width: usize,
}

#[derive(Debug, Clone, Default)]
pub struct Netlist {
    pub top: String,
    pub ports: Vec<Port>,
    pub unused_inputs: Vec<String>,
    pub undriven_outputs: Vec<String>,
}

/// The Yosys script of the light pass; `top` None lets Yosys pick (`-auto-top`). No `opt_clean` (nor
/// `memory`, which runs it): it
/// would delete logic that drives nothing, and with it the evidence of which inputs that logic reads.
pub fn light_script(file: &str, top: Option<&str>, json_out: &str) -> String {
    let hier = match top {
        Some(t) => format!("hierarchy -check -top {t}"),
        None => "hierarchy -check -auto-top".to_string(),
    };
    format!("read_verilog -sv {file}; {hier}; proc; flatten; memory_collect; check; write_json {json_out}")
}

fn bit_key(v: &Value) -> Option<i64> {
    v.as_i64()
}

/// Reads Yosys' `write_json` output.
pub fn analyze(json: &str) -> Result<Netlist, VerifyError> {
    let root: Value = serde_json::from_str(json)
        .map_err(|e| VerifyError::ToolOutput(format!("unreadable Yosys JSON: {e}")))?;
    let modules = root
        .get("modules")
        .and_then(Value::as_object)
        .ok_or_else(|| VerifyError::ToolOutput("Yosys JSON has no modules".into()))?;
    let (top, module) = modules
        .iter()
        .find(|(_, m)| {
            m.pointer("/attributes/top")
                .and_then(Value::as_str)
                .is_some_and(|t| t.trim_start_matches('0') == "1")
        })
        .or_else(|| modules.iter().next())
        .ok_or_else(|| VerifyError::ToolOutput("Yosys JSON has no modules".into()))?;
    let (ports, port_bits) = read_ports(module);
    let graph = CellGraph::of(module);
    let undriven_outputs = undriven_outputs(&port_bits, &graph);
    let unused_inputs = unused_inputs(&port_bits, &graph);
    Ok(Netlist {
        top: top.clone(),
        ports,
        unused_inputs,
        undriven_outputs,
    })
}

/// Port name → (is an input, its bits).
type PortBits = BTreeMap<String, (bool, Vec<Value>)>;

fn read_ports(module: &Value) -> (Vec<Port>, PortBits) {
    let mut ports = Vec::new();
    let mut port_bits = PortBits::new();
    for (name, p) in module
        .get("ports")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let input = p.get("direction").and_then(Value::as_str) == Some("input");
        let bits = p
            .get("bits")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        ports.push(Port {
            name: name.clone(),
            input,
            width: bits.len(),
        });
        port_bits.insert(name.clone(), (input, bits));
    }
    (ports, port_bits)
}

/// The module's cells as a graph over bits.
struct CellGraph {
    /// Which cell drives each bit.
    driver: HashMap<i64, usize>,
    /// Each cell's input bits.
    cell_inputs: Vec<Vec<i64>>,
    /// The cells that hold state: flip-flops, latches, memories.
    state_cells: Vec<usize>,
}

impl CellGraph {
    fn of(module: &Value) -> CellGraph {
        let mut graph = CellGraph {
            driver: HashMap::new(),
            cell_inputs: Vec::new(),
            state_cells: Vec::new(),
        };
        for cell in module
            .get("cells")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(_, c)| c)
        {
            let dirs = cell.get("port_directions").and_then(Value::as_object);
            let conns = cell.get("connections").and_then(Value::as_object);
            let (Some(dirs), Some(conns)) = (dirs, conns) else {
                continue;
            };
            let idx = graph.cell_inputs.len();
            let kind = cell.get("type").and_then(Value::as_str).unwrap_or("");
            if kind.contains("dff")
                || kind.contains("dlatch")
                || kind.starts_with("$mem")
                || kind.starts_with("$sr")
            {
                graph.state_cells.push(idx);
            }
            let mut inputs = Vec::new();
            for (pname, bits) in conns {
                let is_out = dirs.get(pname).and_then(Value::as_str) == Some("output");
                for b in bits.as_array().into_iter().flatten().filter_map(bit_key) {
                    if is_out {
                        graph.driver.insert(b, idx);
                    } else {
                        inputs.push(b);
                    }
                }
            }
            graph.cell_inputs.push(inputs);
        }
        graph
    }
}

/// The bits of the input (or output) ports.
fn bits_of(port_bits: &PortBits, inputs: bool) -> impl Iterator<Item = i64> + '_ {
    port_bits
        .values()
        .filter(move |(input, _)| *input == inputs)
        .flat_map(|(_, bits)| bits.iter().filter_map(bit_key))
}

/// Outputs with a bit that nothing drives (an input port bit or a constant counts as driven).
fn undriven_outputs(port_bits: &PortBits, graph: &CellGraph) -> Vec<String> {
    let input_bits: HashSet<i64> = bits_of(port_bits, true).collect();
    port_bits
        .iter()
        .filter(|(_, (input, bits))| {
            !*input
                && bits
                    .iter()
                    .filter_map(bit_key)
                    .any(|b| !graph.driver.contains_key(&b) && !input_bits.contains(&b))
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// Backward walk from every output bit and every state element (flip-flop, latch, memory): an input
/// that reaches neither is read by nothing that lasts. Starting from state too keeps a design whose
/// output is undriven (the V3 plan's counter) from reporting every input unused.
fn unused_inputs(port_bits: &PortBits, graph: &CellGraph) -> Vec<String> {
    let mut seen: HashSet<i64> = HashSet::new();
    let mut seen_cells: HashSet<usize> = graph.state_cells.iter().copied().collect();
    let mut stack: Vec<i64> = bits_of(port_bits, false).collect();
    for c in &graph.state_cells {
        stack.extend(graph.cell_inputs[*c].iter().copied());
    }
    while let Some(b) = stack.pop() {
        if !seen.insert(b) {
            continue;
        }
        if let Some(&c) = graph.driver.get(&b) {
            if seen_cells.insert(c) {
                stack.extend(graph.cell_inputs[c].iter().copied());
            }
        }
    }
    port_bits
        .iter()
        .filter(|(_, (input, bits))| {
            *input && !bits.iter().filter_map(bit_key).any(|b| seen.contains(&b))
        })
        .map(|(n, _)| n.clone())
        .collect()
}
