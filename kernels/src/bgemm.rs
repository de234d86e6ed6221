//! A batched, strided f32 GEMM: `C[z] = alpha · A[z] B[z] (+ C[z])` for `z` in `0..batch`.
//!
//! Each operand is addressed through an [`Operand`]: element `(i, j)` of batch `z` lives at
//! `base + (z / zi) · outer + ((z % zi) / div) · inner + i · rs + j · cs`, so one launch covers
//! attention over (sequence, head) with heads interleaved in the token rows, transposes (swap
//! `rs`/`cs`) and grouped-query attention (`div` = query heads per key/value head). A plain matrix
//! product ([`crate::matmul`]) is a batch of one. Each cube computes a 64×64 tile of C with 16×16
//! units, each unit a 4×4 block of outputs, stepping through K in slices of 16 staged in shared
//! memory; one cube layer per batch entry (`CUBE_POS_Z`). Out-of-range rows, columns and K are
//! loaded as zeros and never stored, so any shape works.

use cubecl::prelude::*;

use crate::error::{shape_err, Result};
use crate::gpu::{dim_u32, Gpu, GpuTensor};

/// Where one operand's elements live (see the module docs for the formula).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Operand {
    /// Offset of batch entry 0.
    pub base: usize,
    /// Stride per outer batch index `z / zi`.
    pub outer: usize,
    /// Stride per inner batch index `(z % zi) / div`.
    pub inner: usize,
    /// Divisor of the inner batch index (1 = none; the GQA group size for key/value operands).
    pub div: usize,
    /// Row stride.
    pub rs: usize,
    /// Column stride.
    pub cs: usize,
}

impl Operand {
    /// A contiguous row-major `[rows, cols]` matrix per batch entry `z`, at `z · rows · cols`
    /// (for a GEMM whose inner batch count is `zi`).
    pub fn packed(rows: usize, cols: usize, zi: usize) -> Operand {
        Operand {
            base: 0,
            outer: zi * rows * cols,
            inner: rows * cols,
            div: 1,
            rs: cols,
            cs: 1,
        }
    }

    /// The same operand read transposed (rows and columns swapped).
    pub fn t(self) -> Operand {
        Operand {
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// Largest element index touched by a `[rows, cols]` view over `batch` entries.
    fn max_index(&self, batch: usize, zi: usize, rows: usize, cols: usize) -> usize {
        let outer_max = (batch - 1) / zi;
        let inner_max = (zi.min(batch) - 1) / self.div;
        self.base
            + outer_max * self.outer
            + inner_max * self.inner
            + (rows - 1) * self.rs
            + (cols - 1) * self.cs
    }
}

/// A batched GEMM: `batch` products of `[m, k] × [k, n]`, the batch index split as
/// `(z / zi, z % zi)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchedGemm {
    /// Number of products.
    pub batch: usize,
    /// Inner batch count (for example heads, with `z = sequence · heads + head`).
    pub zi: usize,
    /// Rows of A and C.
    pub m: usize,
    /// Columns of B and C.
    pub n: usize,
    /// Columns of A, rows of B.
    pub k: usize,
    /// `[m, k]` per entry.
    pub a: Operand,
    /// `[k, n]` per entry.
    pub b: Operand,
    /// `[m, n]` per entry.
    pub c: Operand,
}

/// One GPU kernel is one function: its shared-memory tiles, registers and barriers live in one scope
/// (cubecl inlines helpers, but a barrier inside one would hide where the workgroup synchronises), so
/// this body stays long, in the order a tile is loaded, multiplied and stored.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn bgemm_kernel(
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    a_base: u32,
    a_outer: u32,
    a_inner: u32,
    a_div: u32,
    a_rs: u32,
    a_cs: u32,
    b_base: u32,
    b_outer: u32,
    b_inner: u32,
    b_div: u32,
    b_rs: u32,
    b_cs: u32,
    c_base: u32,
    c_outer: u32,
    c_inner: u32,
    c_div: u32,
    c_rs: u32,
    c_cs: u32,
    m: u32,
    n: u32,
    k: u32,
    zi: u32,
    alpha: f32,
    #[comptime] accumulate: bool,
) {
    let m = m as usize;
    let n = n as usize;
    let k = k as usize;
    let z = CUBE_POS_Z as usize;
    let zo = z / zi as usize;
    let zin = z % zi as usize;
    let a_off = a_base as usize + zo * a_outer as usize + (zin / a_div as usize) * a_inner as usize;
    let b_off = b_base as usize + zo * b_outer as usize + (zin / b_div as usize) * b_inner as usize;
    let c_off = c_base as usize + zo * c_outer as usize + (zin / c_div as usize) * c_inner as usize;
    let a_rs = a_rs as usize;
    let a_cs = a_cs as usize;
    let b_rs = b_rs as usize;
    let b_cs = b_cs as usize;
    let c_rs = c_rs as usize;
    let c_cs = c_cs as usize;

    let row0 = CUBE_POS_Y as usize * 64;
    let col0 = CUBE_POS_X as usize * 64;
    let tx = UNIT_POS_X as usize;
    let ty = UNIT_POS_Y as usize;
    let tid = UNIT_POS as usize;

    let mut a_s = Shared::<[f32]>::new_slice(1024usize);
    let mut b_s = Shared::<[f32]>::new_slice(1024usize);
    let mut acc = Array::<f32>::new(16usize);
    let mut b_reg = Array::<f32>::new(4usize);
    #[unroll]
    for i in 0..16usize {
        acc[i] = 0.0;
    }

    let tiles = k.div_ceil(16);
    for t in 0..tiles {
        let k0 = t * 16;
        #[unroll]
        for l in 0..4usize {
            let idx = tid + l * 256;
            let ar = idx / 16;
            let ak = idx % 16;
            let gi = row0 + ar;
            let gk = k0 + ak;
            let mut av = 0.0f32;
            if gi < m && gk < k {
                av = a[a_off + gi * a_rs + gk * a_cs];
            }
            a_s[idx] = av;

            let bk = idx / 64;
            let bc = idx % 64;
            let gkb = k0 + bk;
            let gj = col0 + bc;
            let mut bv = 0.0f32;
            if gkb < k && gj < n {
                bv = b[b_off + gkb * b_rs + gj * b_cs];
            }
            b_s[idx] = bv;
        }
        sync_cube();

        #[unroll]
        for kk in 0..16usize {
            #[unroll]
            for j in 0..4usize {
                b_reg[j] = b_s[kk * 64 + tx + j * 16];
            }
            #[unroll]
            for i in 0..4usize {
                let av = a_s[(ty + i * 16) * 16 + kk];
                #[unroll]
                for j in 0..4usize {
                    acc[i * 4 + j] += av * b_reg[j];
                }
            }
        }
        sync_cube();
    }

    #[unroll]
    for i in 0..4usize {
        let gi = row0 + ty + i * 16;
        #[unroll]
        for j in 0..4usize {
            let gj = col0 + tx + j * 16;
            if gi < m && gj < n {
                let out = c_off + gi * c_rs + gj * c_cs;
                if accumulate {
                    c[out] += alpha * acc[i * 4 + j];
                } else {
                    c[out] = alpha * acc[i * 4 + j];
                }
            }
        }
    }
}

const OP: &str = "batched_matmul";

fn operand_args(o: &Operand) -> Result<[u32; 6]> {
    Ok([
        dim_u32(OP, o.base)?,
        dim_u32(OP, o.outer)?,
        dim_u32(OP, o.inner)?,
        dim_u32(OP, o.div)?,
        dim_u32(OP, o.rs)?,
        dim_u32(OP, o.cs)?,
    ])
}

impl Gpu {
    /// `C[z] = alpha · A[z] B[z]` (or `+=` when `accumulate`) for every batch entry of `g`.
    ///
    /// Every index the launch touches is checked against the buffers' lengths first. Distinct
    /// batch entries must not write the same element of `c`, and `c` must not alias `a` or `b`.
    pub fn batched_matmul_into(
        &self,
        g: &BatchedGemm,
        a: &GpuTensor,
        b: &GpuTensor,
        alpha: f32,
        c: &GpuTensor,
        accumulate: bool,
    ) -> Result<()> {
        if g.batch == 0 || g.m == 0 || g.n == 0 {
            return Ok(());
        }
        if g.k == 0 || g.zi == 0 || g.a.div == 0 || g.b.div == 0 || g.c.div == 0 {
            return Err(shape_err(
                OP,
                format!("k, zi and every div must be > 0: {g:?}"),
            ));
        }
        for (name, o, t, rows, cols) in [
            ("a", &g.a, a, g.m, g.k),
            ("b", &g.b, b, g.k, g.n),
            ("c", &g.c, c, g.m, g.n),
        ] {
            let max = o.max_index(g.batch, g.zi, rows, cols);
            if max >= t.len() {
                return Err(shape_err(
                    OP,
                    format!("{name} reaches element {max} but holds {} ({g:?})", t.len()),
                ));
            }
        }
        let grid_x = dim_u32(OP, g.n.div_ceil(64))?;
        let grid_y = dim_u32(OP, g.m.div_ceil(64))?;
        let grid_z = dim_u32(OP, g.batch)?;
        if grid_x > 65_535 || grid_y > 65_535 || grid_z > 65_535 {
            return Err(shape_err(OP, format!("too many tiles for {g:?}")));
        }
        let (oa, ob, oc) = (
            operand_args(&g.a)?,
            operand_args(&g.b)?,
            operand_args(&g.c)?,
        );
        // SAFETY: the largest index of every operand was checked against its length above; the
        // kernel guards rows/columns/K, and shared/local indices are in range by construction.
        unsafe {
            bgemm_kernel::launch_unchecked(
                &self.client,
                CubeCount::Static(grid_x, grid_y, grid_z),
                CubeDim::new_2d(16, 16),
                a.arg(),
                b.arg(),
                c.arg(),
                oa[0],
                oa[1],
                oa[2],
                oa[3],
                oa[4],
                oa[5],
                ob[0],
                ob[1],
                ob[2],
                ob[3],
                ob[4],
                ob[5],
                oc[0],
                oc[1],
                oc[2],
                oc[3],
                oc[4],
                oc[5],
                dim_u32(OP, g.m)?,
                dim_u32(OP, g.n)?,
                dim_u32(OP, g.k)?,
                dim_u32(OP, g.zi)?,
                alpha,
                accumulate,
            );
        }
        Ok(())
    }
}
