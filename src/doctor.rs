//! `rtlab doctor`: the external tools the stdlib uses, their versions, and how to install what is missing.

use std::process::Command;

/// One external dependency.
pub struct Tool {
    pub name: &'static str,
    pub used_for: &'static str,
    pub install: &'static str,
    /// The version line, or `None` when missing.
    pub version: Option<String>,
}

/// An EDA tool's version line, asked the way the verifier asks it (`rtlab_verify::process::tool_version`:
/// its own process group, rlimits, a timeout), with the install command the verifier's errors give.
fn eda(tool: rtlab_verify::Tool, used_for: &'static str) -> Tool {
    Tool {
        name: tool.program,
        used_for,
        install: tool.install,
        version: rtlab_verify::process::tool_version(tool.program, tool.version_args),
    }
}

fn vulkan_drivers() -> Option<String> {
    let mut names = Vec::new();
    for dir in [
        "/usr/share/vulkan/icd.d",
        "/etc/vulkan/icd.d",
        "/usr/local/share/vulkan/icd.d",
    ] {
        if let Ok(read) = std::fs::read_dir(dir) {
            for e in read.flatten() {
                let n = e.file_name().to_string_lossy().to_string();
                let pretty = if n.starts_with("lvp") {
                    format!("{n} (lavapipe, software)")
                } else {
                    n
                };
                names.push(pretty);
            }
        }
    }
    let loader = [
        "/usr/lib/x86_64-linux-gnu/libvulkan.so.1",
        "/usr/lib/aarch64-linux-gnu/libvulkan.so.1",
        "/usr/lib/libvulkan.so.1",
    ]
    .iter()
    .any(|p| std::path::Path::new(p).exists());
    (loader && !names.is_empty()).then(|| format!("Vulkan loader + ICDs: {}", names.join(", ")))
}

fn cuda() -> Option<String> {
    let out = Command::new("nvidia-smi")
        .args(["--query-gpu=name,driver_version", "--format=csv,noheader"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!text.is_empty()).then(|| format!("CUDA driver: {}", text.replace('\n', "; ")))
}

/// Probes every tool.
pub fn probe() -> Vec<Tool> {
    vec![
        eda(rtlab_verify::IVERILOG, "verify: syntax, elaboration, simulation"),
        eda(rtlab_verify::VVP, "verify: simulation runtime"),
        eda(rtlab_verify::YOSYS, "verify: synthesis, I/O use"),
        eda(rtlab_verify::VERILATOR, "verify: lint (-Wall)"),
        Tool { name: "wgpu (Vulkan)", used_for: "train: cubecl kernels on the wgpu runtime", install: "apt-get install -y mesa-vulkan-drivers libvulkan1", version: vulkan_drivers() },
        Tool { name: "CUDA", used_for: "train: cubecl kernels on NVIDIA GPUs", install: "install the NVIDIA driver and NVRTC (the cuda-nvrtc package, not the whole toolkit: kernels compile at run time)", version: cuda() },
    ]
}

/// The doctor's report, one line per tool.
pub fn report(tools: &[Tool]) -> String {
    let mut out = String::from("rtlab doctor: external tools\n");
    for t in tools {
        match &t.version {
            Some(v) => out.push_str(&format!("  ok       {:<14} {v}\n", t.name)),
            None => out.push_str(&format!(
                "  missing  {:<14} needed for {}; install: {}\n",
                t.name, t.used_for, t.install
            )),
        }
    }
    out
}
