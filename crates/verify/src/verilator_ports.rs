//! A module's ports read by Verilator (`--xml-only`), for the differential testbench when Yosys
//! cannot read the reference (Yosys 0.2x rejects the enum casts of VerilogEval's Prob151 and Prob156,
//! which Verilator and simulators accept).

use super::process::{run_tool, verilator_command, Limits};
use super::yosys::Port;
use crate::VerifyError;
use quick_xml::events::Event;
use std::collections::HashMap;
use std::path::Path;

/// The top module's name and ports, in declaration order, from Verilator's XML of `file` in `dir`.
pub fn read(dir: &Path, file: &str, limits: Limits) -> Result<(String, Vec<Port>), VerifyError> {
    let (program, limits) = verilator_command(limits);
    let args = [
        "--xml-only",
        "-Wno-fatal",
        "-Wno-lint",
        "-Wno-style",
        "--Mdir",
        "ports_xml",
        "--xml-output",
        "ports.xml",
        file,
    ];
    let o = run_tool(program, &args, dir, limits);
    let xml = std::fs::read_to_string(dir.join("ports.xml")).map_err(|_| {
        VerifyError::ToolOutput(format!(
            "Verilator cannot read it either: {}",
            o.output
                .lines()
                .filter(|l| l.contains("%Error"))
                .take(3)
                .collect::<Vec<_>>()
                .join("; ")
        ))
    })?;
    parse(&xml)
}

/// A module as the XML gives it: name, whether it is the top, and its ports as (name, direction,
/// dtype id), in declaration order.
type XmlModule = (String, bool, Vec<(String, String, String)>);

/// The first `topModule` (else the first module) of Verilator's XML, with its ports.
fn parse(xml: &str) -> Result<(String, Vec<Port>), VerifyError> {
    let (modules, widths) = read_xml(xml)?;
    let module = modules
        .iter()
        .find(|m| m.1)
        .or(modules.first())
        .ok_or_else(|| VerifyError::ToolOutput("Verilator's XML names no module".into()))?;
    let ports = module
        .2
        .iter()
        .map(|(name, dir, dtype)| {
            let width = *widths.get(dtype).ok_or_else(|| VerifyError::Port {
                port: name.clone(),
                problem: "has a type the differential testbench cannot drive".into(),
            })?;
            match dir.as_str() {
                "input" => Ok(Port { name: name.clone(), input: true, width }),
                "output" => Ok(Port { name: name.clone(), input: false, width }),
                other => Err(VerifyError::Port {
                    port: name.clone(),
                    problem: format!("is {other}: the differential testbench drives inputs and reads outputs only"),
                }),
            }
        })
        .collect::<Result<Vec<_>, VerifyError>>()?;
    Ok((module.0.clone(), ports))
}

/// The modules of Verilator's XML with their ports, and the width of every basic dtype by id.
fn read_xml(xml: &str) -> Result<(Vec<XmlModule>, HashMap<String, usize>), VerifyError> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut modules: Vec<XmlModule> = Vec::new();
    // dtype id → width.
    let mut widths: HashMap<String, usize> = HashMap::new();
    let mut depth_in_module = None;
    let mut depth = 0usize;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| VerifyError::ToolOutput(format!("Verilator's XML: {e}")))?;
        let (start, empty) = match &event {
            Event::Start(e) => (Some(e.clone()), false),
            Event::Empty(e) => (Some(e.clone()), true),
            Event::End(_) => {
                depth -= 1;
                if depth_in_module == Some(depth) {
                    depth_in_module = None;
                }
                continue;
            }
            Event::Eof => break,
            _ => continue,
        };
        let Some(e) = start else { continue };
        let attr = |name: &str| -> Option<String> {
            e.attributes()
                .flatten()
                .find(|a| a.key.as_ref() == name.as_bytes())
                .and_then(|a| a.unescape_value().ok().map(|v| v.to_string()))
        };
        match e.name().as_ref() {
            b"module" => {
                modules.push((
                    attr("name").unwrap_or_default(),
                    attr("topModule").as_deref() == Some("1"),
                    Vec::new(),
                ));
                depth_in_module = Some(depth);
            }
            b"var" if depth_in_module.is_some() => {
                if let (Some(name), Some(dir), Some(dtype)) =
                    (attr("name"), attr("dir"), attr("dtype_id"))
                {
                    if let Some(m) = modules.last_mut() {
                        m.2.push((name, dir, dtype));
                    }
                }
            }
            b"basicdtype" => {
                let bound = |k: &str| attr(k).and_then(|v| v.parse::<i64>().ok());
                let width = match (bound("left"), bound("right")) {
                    (Some(l), Some(r)) => (l - r).unsigned_abs() as usize + 1,
                    _ => 1,
                };
                if let Some(id) = attr("id") {
                    widths.insert(id, width);
                }
            }
            _ => {}
        }
        if !empty {
            depth += 1;
        }
    }
    Ok((modules, widths))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_come_in_order_with_their_widths() {
        let xml = r#"<verilator_xml><netlist>
            <module name="RefModule" origName="RefModule" topModule="1">
              <var name="clk" dtype_id="1" dir="input" pinIndex="1"/>
              <var name="q" dtype_id="2" dir="output" pinIndex="2"/>
              <var name="state" dtype_id="2"/>
            </module>
            <typetable><basicdtype id="1" name="logic"/><basicdtype id="2" name="logic" left="7" right="0"/></typetable>
            </netlist></verilator_xml>"#;
        let (top, ports) = parse(xml).unwrap();
        assert_eq!(top, "RefModule");
        let shown: Vec<(String, bool, usize)> = ports
            .into_iter()
            .map(|p| (p.name, p.input, p.width))
            .collect();
        assert_eq!(
            shown,
            [("clk".to_string(), true, 1), ("q".to_string(), false, 8)]
        );
    }
}
