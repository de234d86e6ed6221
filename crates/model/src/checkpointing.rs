//! How many layers a training step recomputes in its backward (gradient checkpointing), chosen from
//! what the layers' graphs would hold.
//!
//! Keeping a layer's graph costs memory (its activations, until the backward has used them);
//! recomputing it costs one more forward of that layer. The gradients are the same numbers either way
//! ([`CausalLm::loss_and_grads`]), so the choice is only speed against memory, and it can be made
//! per micro-batch: [`Checkpointing::Within`] keeps the top layers' graphs while they fit a byte
//! budget and recomputes the rest, so a short batch runs at the whole graph's speed and a long one
//! stays inside the budget.

use crate::model::CausalLm;
use candle_core::DType;
use std::path::{Path, PathBuf};

/// Which layers' activations a training step keeps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Checkpointing {
    /// Recompute every layer (Hugging Face's `gradient_checkpointing_enable()`): the least memory.
    Every,
    /// Keep every layer's graph: the fastest, the most memory.
    Never,
    /// Keep the graphs of as many layers as fit in `bytes` (counted from the top), recompute the
    /// others.
    Within { bytes: u64 },
}

impl Checkpointing {
    /// The default: keep layers' graphs in at most half the memory available now (Linux's
    /// `MemAvailable`, or the room under the process's control group's limit where that is less),
    /// so the rest of the process and the machine keep theirs; recompute every layer where the
    /// available memory cannot be read.
    pub fn auto() -> Checkpointing {
        match available_memory_bytes() {
            Some(available) => Checkpointing::Within {
                bytes: available / 2,
            },
            None => Checkpointing::Every,
        }
    }

    /// The bottom layers to recompute for a micro-batch of `batch` sequences of `width` tokens (the
    /// `recomputed` argument of [`CausalLm::loss_and_grads`]).
    pub fn recomputed_layers(&self, model: &CausalLm, batch: usize, width: usize) -> usize {
        let layers = model.cfg.num_hidden_layers;
        match *self {
            Checkpointing::Every => layers,
            Checkpointing::Never => 0,
            Checkpointing::Within { bytes } => {
                let per_layer = model.graph_bytes_per_layer(batch, width).max(1);
                let kept = usize::try_from(bytes / per_layer).unwrap_or(usize::MAX);
                layers - kept.min(layers)
            }
        }
    }
}

impl CausalLm {
    /// An upper bound on the bytes one layer's graph holds in a training forward of `batch`
    /// sequences of `width` tokens: what its backward needs (the residual stream and its norms, q, k
    /// and v with their rotations and the heads repeated, attention's two `width × width` matrices per
    /// head, the MLP's gate, up and their product, each adapter's rank-wide product and, with
    /// dropout, its mask and dropped input), plus a tenth for what the count misses.
    ///
    /// The coefficients were fitted to what a forward keeps, counted by the allocator in
    /// `tests/activation_memory.rs`, which checks that this stays above the count and within a third
    /// of it over shapes, ranks, dropout, targets, both architectures and both precisions: a change
    /// to what the forward keeps fails that test until the coefficients follow.
    pub fn graph_bytes_per_layer(&self, batch: usize, width: usize) -> u64 {
        let c = &self.cfg;
        let kv_dim = c.num_key_value_heads * c.head_dim;
        let mut per_token = 15 * c.hidden_size
            + 3 * kv_dim
            + 3 * c.intermediate_size
            + 2 * c.num_attention_heads * width
            + 96;
        for lora in self.layer_adapters(0) {
            let (rank, inputs) = lora.a.dims2().unwrap_or((0, 0));
            per_token += rank;
            if lora.dropout > 0.0 {
                per_token += 2 * inputs;
            }
        }
        // The fused nodes (f32 on the CPU) keep only what their backward needs; candle's ops, which
        // the other precisions take, keep every intermediate: about twice as much.
        let unfused = if self.dtype == DType::F32 { 1.0 } else { 2.2 };
        let bytes = (batch * width * per_token * self.dtype.size_in_bytes()) as f64;
        (bytes * 1.1 * unfused) as u64
    }
}

/// The memory this process may still take: Linux's `MemAvailable`, or less where the process's
/// control group (a container's `--memory`, a Slurm job's `ConstrainRAMSpace`) leaves less, since
/// going past a group's limit kills the process whatever the machine has free.
fn available_memory_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    let machine = kib * 1024;
    let groups = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    Some(
        match cgroup_headroom(Path::new("/sys/fs/cgroup"), &groups) {
            Some(group) => machine.min(group),
            None => machine,
        },
    )
}

/// The least room left under a memory limit of the process's control group or of any group above
/// it, read under `root` (where cgroup file systems are mounted) for the groups `proc_self_cgroup`
/// (the text of `/proc/self/cgroup`) names, in cgroup v2 (`memory.max`, `memory.current`) or v1
/// (`memory.limit_in_bytes`, `memory.usage_in_bytes`); `None` where no limit applies.
fn cgroup_headroom(root: &Path, proc_self_cgroup: &str) -> Option<u64> {
    // v1's "no limit" is a page-rounded i64::MAX; any limit past 2^62 bytes is none.
    const UNLIMITED: u64 = 1 << 62;
    let read = |path: PathBuf| -> Option<u64> {
        let text = std::fs::read_to_string(path).ok()?;
        text.trim().parse().ok().filter(|&v| v < UNLIMITED)
    };
    let mut least: Option<u64> = None;
    for line in proc_self_cgroup.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let (mount, limit_file, usage_file) = if id == "0" && controllers.is_empty() {
            (root.to_path_buf(), "memory.max", "memory.current")
        } else if controllers.split(',').any(|c| c == "memory") {
            (
                root.join("memory"),
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
            )
        } else {
            continue;
        };
        // The group's own directory, then each one above it up to the mount.
        let mut dir = mount.join(path.trim_start_matches('/'));
        loop {
            if let (Some(limit), Some(usage)) =
                (read(dir.join(limit_file)), read(dir.join(usage_file)))
            {
                let room = limit.saturating_sub(usage);
                least = Some(least.map_or(room, |l| l.min(room)));
            }
            if dir == mount || !dir.pop() {
                break;
            }
        }
    }
    least
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Arch;
    use crate::testing::{lora_model, tiny_dir};

    #[test]
    fn a_budget_keeps_the_top_layers_that_fit_and_recomputes_the_rest() {
        let dir = tiny_dir(Arch::Llama);
        let m = lora_model(dir.path(), DType::F32);
        let layers = m.cfg.num_hidden_layers;
        assert_eq!(layers, 2);
        let per_layer = m.graph_bytes_per_layer(4, 30);
        let within = |bytes| Checkpointing::Within { bytes }.recomputed_layers(&m, 4, 30);
        assert_eq!(within(0), 2, "nothing fits: every layer recomputed");
        assert_eq!(within(per_layer - 1), 2);
        assert_eq!(
            within(per_layer),
            1,
            "one layer's graph fits: the top one kept"
        );
        assert_eq!(within(2 * per_layer - 1), 1);
        assert_eq!(within(2 * per_layer), 0, "both fit: the whole graph");
        assert_eq!(within(u64::MAX), 0);
        assert_eq!(Checkpointing::Every.recomputed_layers(&m, 4, 30), 2);
        assert_eq!(Checkpointing::Never.recomputed_layers(&m, 4, 30), 0);
    }

    #[test]
    fn a_longer_batch_needs_more_than_in_proportion_to_its_tokens() {
        // Attention keeps width × width per head: twice the width, more than twice the bytes.
        let dir = tiny_dir(Arch::Llama);
        let m = lora_model(dir.path(), DType::F32);
        let (short, long) = (
            m.graph_bytes_per_layer(2, 32),
            m.graph_bytes_per_layer(2, 64),
        );
        assert!(long > 2 * short, "{long} ≤ 2 × {short}");
        let twice_the_rows = m.graph_bytes_per_layer(4, 32);
        assert!(
            twice_the_rows.abs_diff(2 * short) <= 1,
            "{twice_the_rows} against 2 × {short}"
        );
    }

    #[test]
    fn a_control_groups_limit_bounds_the_memory_available() {
        let root = tempfile::tempdir().unwrap();
        let write = |path: &str, text: &str| {
            let path = root.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        // cgroup v2: the job's group has 8 GiB with 3 used; its parent 6 GiB with 5 used (1 left).
        write("job/step/memory.max", "8589934592\n");
        write("job/step/memory.current", "3221225472\n");
        write("job/memory.max", "6442450944\n");
        write("job/memory.current", "5368709120\n");
        assert_eq!(
            cgroup_headroom(root.path(), "0::/job/step\n"),
            Some(1 << 30),
            "the tightest group up the tree"
        );
        write("job/memory.max", "max\n");
        assert_eq!(
            cgroup_headroom(root.path(), "0::/job/step\n"),
            Some(5 << 30)
        );
        // cgroup v1, unlimited (a page-rounded i64::MAX), as on this project's CI machines.
        write("memory/ci/memory.limit_in_bytes", "9223372036854771712\n");
        write("memory/ci/memory.usage_in_bytes", "7960424448\n");
        assert_eq!(
            cgroup_headroom(root.path(), "4:memory:/ci\n3:cpuset:/\n"),
            None
        );
        write("memory/ci/memory.limit_in_bytes", "4294967296\n");
        assert_eq!(
            cgroup_headroom(root.path(), "4:memory:/ci\n3:cpuset:/\n"),
            Some(0),
            "a group past its limit has no room"
        );
        assert_eq!(cgroup_headroom(root.path(), "0::/nowhere\n"), None);
    }
}
