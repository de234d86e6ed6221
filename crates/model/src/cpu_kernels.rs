//! What rtlab's quantized CPU kernels (`q4_1.rs`, `q8_0.rs`) share: the CPU's features, read once;
//! the choice of instructions (every choice gives the same bits); and the split of a product's
//! columns into work items on candle's thread pool, each writing its own part of the result.

use std::sync::OnceLock;

/// What the CPU (and the environment) decide, read once as candle reads them once.
pub(crate) struct Cpu {
    /// rtlab's kernels can run: AVX2 and FMA, and `RTLAB_QMATMUL` is not `candle` (which runs
    /// candle's kernels everywhere, with Q4_1 requantized to Q8_0 for them: the baseline of
    /// `cargo bench --bench gguf`).
    pub(crate) avx2_fma: bool,
    /// F16C: the kernels convert their blocks' f16 scales with it.
    pub(crate) f16c: bool,
    /// AVX-512 F, BW and VNNI (and `RTLAB_QMATMUL` is not `avx2`): the kernels take 16 columns per
    /// register and `vpdpbusd`.
    pub(crate) avx512_vnni: bool,
    /// AVX-512 F (and `RTLAB_QMATMUL` is not `avx2`): decoding's attention takes 16 positions or
    /// dimensions per register.
    pub(crate) avx512f: bool,
}

/// The instructions that compute a kernel's dot products. Every choice gives the same bits: the
/// integer sums are exact and each lane does the same float operations in the same order (the
/// tests compare each one this CPU has with a scalar form of the arithmetic).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dots {
    /// AVX2's `vpmaddubsw` then `vpmaddwd`, 8 columns per register: every CPU the kernels run on.
    Avx2,
    /// AVX-512's `vpdpbusd`, 16 columns per register.
    Avx512Vnni,
}

impl Dots {
    /// The fastest this CPU has.
    pub(crate) fn best() -> Dots {
        if cpu().avx512_vnni {
            Dots::Avx512Vnni
        } else {
            Dots::Avx2
        }
    }

    /// Every choice this CPU can run (the tests check each).
    #[cfg(test)]
    pub(crate) fn on_this_cpu() -> Vec<Dots> {
        let mut all = vec![Dots::Avx2];
        if cpu().avx512_vnni {
            all.push(Dots::Avx512Vnni);
        }
        all
    }
}

pub(crate) fn cpu() -> &'static Cpu {
    static CPU: OnceLock<Cpu> = OnceLock::new();
    CPU.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let env_is = |name: &str, value: &str| std::env::var(name).as_deref() == Ok(value);
            Cpu {
                avx2_fma: is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && !env_is("RTLAB_QMATMUL", "candle"),
                f16c: is_x86_feature_detected!("f16c"),
                avx512_vnni: is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vnni")
                    && !env_is("RTLAB_QMATMUL", "avx2"),
                avx512f: is_x86_feature_detected!("avx512f") && !env_is("RTLAB_QMATMUL", "avx2"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Cpu {
            avx2_fma: false,
            f16c: false,
            avx512_vnni: false,
            avx512f: false,
        }
    })
}

/// Columns per parallel task: enough work to pay for the task, small enough to balance two cores.
pub(crate) const COLUMNS_PER_TASK: usize = 32;

/// A buffer that the pool's work items write disjoint parts of.
pub(crate) struct SharedOut<T>(pub(crate) *mut T);
// SAFETY: every use writes elements no other work item touches.
unsafe impl<T> Sync for SharedOut<T> {}
impl<T> SharedOut<T> {
    pub(crate) fn at(&self, i: usize) -> *mut T {
        // SAFETY: callers index within the buffer.
        unsafe { self.0.add(i) }
    }
}

/// Where one product's work items are: several weights that multiply the same activations (a
/// layer's q, k and v; its gate and up) are computed as one product whose columns are theirs one
/// after the other, so the pool is woken once for all of them. `segments[s]` is weight `s`'s column
/// count; each work item owns [`COLUMNS_PER_TASK`] columns (fewer at a weight's end) of one weight,
/// never columns of two, so every (row, column) is computed by the same tile it gets alone.
struct Segments {
    /// Per weight, its first work item; then the total.
    first_task: Vec<usize>,
}

impl Segments {
    fn new(segments: &[usize]) -> Segments {
        let mut first_task = Vec::with_capacity(segments.len() + 1);
        let mut tasks = 0;
        for &n in segments {
            first_task.push(tasks);
            tasks += n.div_ceil(COLUMNS_PER_TASK);
        }
        first_task.push(tasks);
        Segments { first_task }
    }

    fn tasks(&self) -> usize {
        self.first_task.last().copied().unwrap_or(0)
    }

    /// Work item `task`'s weight and its first column in that weight.
    fn locate(&self, task: usize) -> (usize, usize) {
        let s = self.first_task.partition_point(|&first| first <= task) - 1;
        (s, (task - self.first_task[s]) * COLUMNS_PER_TASK)
    }
}

/// One [m, n] result per weight, the buffers the pool's work items write: allocated, not zeroed
/// (the work items write every element; zeroing them first was 2% of a 20-row decoding step), so
/// empty until [`group_products`] has written them.
fn result_buffers(m: usize, segments: &[usize]) -> (Vec<Vec<f32>>, Vec<SharedOut<f32>>) {
    let mut results: Vec<Vec<f32>> = segments
        .iter()
        .map(|&n| Vec::with_capacity(m * n))
        .collect();
    let outs = results
        .iter_mut()
        .map(|r| SharedOut(r.as_mut_ptr()))
        .collect();
    (results, outs)
}

/// The [m, n_s] results of products whose weights are packed in groups of `group` columns (the Q4_1
/// and Q8_0 kernels' layout): `tile(s, g, (row, rows), out)` computes rows `row..row + rows` of weight `s`'s
/// group `g` into `out` (`rows × group`, row-major), and the columns that exist are copied into the
/// result. Every row of a group is computed by one call, so each (row, column) is what its weight
/// alone gives. Each work item owns [`COLUMNS_PER_TASK`] columns of one weight.
pub(crate) fn group_products(
    m: usize,
    segments: &[usize],
    group: usize,
    tile: impl Fn(usize, usize, (usize, usize), &mut [f32]) + Sync,
) -> Vec<Vec<f32>> {
    debug_assert!(COLUMNS_PER_TASK.is_multiple_of(group));
    let (results, outs) = result_buffers(m, segments);
    let layout = Segments::new(segments);
    candle_core::utils::barrier_pool().execute_chunked(layout.tasks(), |range| {
        let mut values = vec![0f32; m * group];
        for task in range {
            let (s, first) = layout.locate(task);
            let (n, out) = (segments[s], &outs[s]);
            let last = (first + COLUMNS_PER_TASK).min(n);
            for col in (first..last).step_by(group) {
                tile(s, col / group, (0, m), &mut values);
                let width = (last - col).min(group);
                for row in 0..m {
                    let from = &values[row * group..][..width];
                    // SAFETY: columns col..col + width of weight s, row < m, lie in its buffer's
                    // capacity and belong to this work item alone.
                    unsafe {
                        std::ptr::copy_nonoverlapping(from.as_ptr(), out.at(row * n + col), width)
                    };
                }
            }
        }
    });
    let mut results = results;
    for (result, &n) in results.iter_mut().zip(segments) {
        // SAFETY: the work items cover columns 0..n of every weight (`Segments`), each for rows
        // 0..m, so all m · n values are written.
        unsafe { result.set_len(m * n) };
    }
    results
}

/// Runs a packed kernel's tiles over rows `row..row + rows` of one group of 16 columns into `out`
/// (`rows × 16`): the AVX-512 tile `$wide::<R>` (up to 8 rows, one register each) where `$is_wide`,
/// else the 256-bit tile `$narrow::<R>` (up to 4 rows) on each half of the group. `$args` are the
/// tiles' leading arguments; each tile takes then its first row, the half, and its rows of `out`.
macro_rules! run_group_tiles {
    (@call $tile:ident, $r:literal, ($($arg:expr),*), $($rest:expr),*) => {
        $tile::<$r>($($arg,)* $($rest),*)
    };
    (@rows $tile:ident, $most:literal, $half:expr, ($row:expr, $rows:expr), $out:expr, $args:tt, [$($r:literal)+]) => {{
        let mut done = 0;
        while done < $rows {
            let here = ($rows - done).min($most);
            let out = &mut $out[done * 16..(done + here) * 16];
            match here {
                $($r => $crate::cpu_kernels::run_group_tiles!(@call $tile, $r, $args, $row + done, $half, out),)+
                _ => unreachable!("a tile has 1 to {} rows", $most),
            }
            done += here;
        }
    }};
    ($is_wide:expr, $rows:tt, $out:expr, $wide:ident, $narrow:ident, $args:tt) => {{
        if $is_wide {
            $crate::cpu_kernels::run_group_tiles!(@rows $wide, 8, 0, $rows, $out, $args, [1 2 3 4 5 6 7 8]);
        } else {
            for half in 0..2 {
                $crate::cpu_kernels::run_group_tiles!(@rows $narrow, 4, half, $rows, $out, $args, [1 2 3 4]);
            }
        }
    }};
}
pub(crate) use run_group_tiles;

/// Columns per group of the packed layouts: a 512-bit register's 32-bit lanes.
pub(crate) const GROUP: usize = 16;

/// How a GGML block format is repacked: a block of `block_bytes`, byte `i` of a group's column `c`
/// going to `place(c, i)` within the group's block (`GROUP · block_bytes` bytes), stored as
/// `stored(i, byte)`; `stored` is its own inverse, so unpacking applies it again.
pub(crate) struct GroupLayout {
    pub(crate) block_bytes: usize,
    pub(crate) place: fn(usize, usize) -> usize,
    pub(crate) stored: fn(usize, u8) -> u8,
}

impl GroupLayout {
    /// `data` ([n, kb] GGML blocks) in groups of [`GROUP`] columns; the last group's missing columns
    /// are packed from all-zero blocks (zero scales, so their products are 0 and are dropped).
    pub(crate) fn pack(&self, data: &[u8], n: usize, kb: usize) -> Vec<u8> {
        let group_block = GROUP * self.block_bytes;
        let zero = vec![0u8; self.block_bytes];
        let columns = n.div_ceil(GROUP) * GROUP;
        let mut bytes = vec![0u8; columns / GROUP * kb * group_block];
        for col in 0..columns {
            for b in 0..kb {
                let from = match col < n {
                    true => &data[(col * kb + b) * self.block_bytes..][..self.block_bytes],
                    false => &zero[..],
                };
                let at = (col / GROUP * kb + b) * group_block;
                for (i, &byte) in from.iter().enumerate() {
                    bytes[at + (self.place)(col % GROUP, i)] = (self.stored)(i, byte);
                }
            }
        }
        bytes
    }

    /// The GGML blocks [n, kb] that [`GroupLayout::pack`] packed into `bytes`, bit for bit.
    pub(crate) fn unpack(&self, bytes: &[u8], n: usize, kb: usize) -> Vec<u8> {
        let group_block = GROUP * self.block_bytes;
        let mut data = vec![0u8; n * kb * self.block_bytes];
        for col in 0..n {
            for b in 0..kb {
                let at = (col / GROUP * kb + b) * group_block;
                let to = &mut data[(col * kb + b) * self.block_bytes..][..self.block_bytes];
                for (i, byte) in to.iter_mut().enumerate() {
                    *byte = (self.stored)(i, bytes[at + (self.place)(col % GROUP, i)]);
                }
            }
        }
        data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_products_writes_every_row_and_column_of_every_weight() {
        // Weights whose widths are and are not multiples of a group and of a work item, one row to
        // twenty: each value is its (weight, row, column), so a value not written, or written to
        // the wrong place, shows.
        let group = 16;
        for m in [1, 3, 20] {
            let segments = [1, 16, 37, 64, 300];
            let value =
                |s: usize, row: usize, col: usize| (s * 1_000_000 + row * 1000 + col) as f32;
            let results = group_products(m, &segments, group, |s, g, (row, rows), out| {
                for r in 0..rows {
                    for j in 0..group {
                        out[r * group + j] = value(s, row + r, g * group + j);
                    }
                }
            });
            for (s, (result, &n)) in results.iter().zip(&segments).enumerate() {
                assert_eq!(result.len(), m * n);
                for row in 0..m {
                    for col in 0..n {
                        assert_eq!(
                            result[row * n + col],
                            value(s, row, col),
                            "m {m}, weight {s}"
                        );
                    }
                }
            }
        }
    }
}
