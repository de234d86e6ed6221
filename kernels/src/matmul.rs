//! A shared-memory tiled f32 GEMM, `C = alpha · op(A) op(B) (+ C)`, with transposes as strides.
//!
//! Why not cubecl's own matmul: in the 0.11 line it lives in the separate `cubek-matmul` crate
//! (0.3.x), a ~37k-line generic kernel library built around tensor-core/plane routines and
//! autotuning. It would multiply this crate's build time on a 2-core machine and its selection
//! logic is tuned for real GPUs, not lavapipe; the LoRA shapes here (a rank-r side path next to
//! one frozen projection) are served well enough by one straightforward kernel whose every line
//! we can test. Swapping it in later only touches [`Gpu::matmul_into`].
//!
//! Each cube computes a 64×64 tile of C with 16×16 units, each unit a 4×4 block of outputs,
//! stepping through K in slices of 16 staged in shared memory. Out-of-range rows/columns/K are
//! loaded as zeros and never stored, so any shape works.

use cubecl::prelude::*;

use crate::error::{shape_err, Result};
use crate::gpu::{dim_u32, Gpu, GpuTensor};

const TILE_M: usize = 64;
const TILE_N: usize = 64;

/// Tiled GEMM. Element `(i, k)` of A is `a[i * a_rs + k * a_cs]`, `(k, j)` of B is
/// `b[k * b_rs + j * b_cs]`; C is contiguous `[m, n]`.
///
/// Long for the same reason as `bgemm_kernel`: a kernel body with its tiles and barriers in one scope.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn gemm_kernel(
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    m: u32,
    n: u32,
    k: u32,
    a_rs: u32,
    a_cs: u32,
    b_rs: u32,
    b_cs: u32,
    alpha: f32,
    #[comptime] accumulate: bool,
) {
    let m = m as usize;
    let n = n as usize;
    let k = k as usize;
    let a_rs = a_rs as usize;
    let a_cs = a_cs as usize;
    let b_rs = b_rs as usize;
    let b_cs = b_cs as usize;

    let row0 = CUBE_POS_Y as usize * 64;
    let col0 = CUBE_POS_X as usize * 64;
    let tx = UNIT_POS_X as usize;
    let ty = UNIT_POS_Y as usize;
    let tid = UNIT_POS as usize;

    // a_s: [64 rows][16 k], b_s: [16 k][64 cols]
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
                av = a[gi * a_rs + gk * a_cs];
            }
            a_s[idx] = av;

            let bk = idx / 64;
            let bc = idx % 64;
            let gkb = k0 + bk;
            let gj = col0 + bc;
            let mut bv = 0.0f32;
            if gkb < k && gj < n {
                bv = b[gkb * b_rs + gj * b_cs];
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
                let out = gi * n + gj;
                if accumulate {
                    c[out] += alpha * acc[i * 4 + j];
                } else {
                    c[out] = alpha * acc[i * 4 + j];
                }
            }
        }
    }
}

impl Gpu {
    /// `c = alpha · op(a) op(b)`, or `c += ...` when `accumulate`; `op` transposes when asked.
    ///
    /// `a` is stored `[m, k]` (or `[k, m]` with `trans_a`), `b` is stored `[k, n]` (or `[n, k]`
    /// with `trans_b`), `c` must be `[m, n]` and must not alias `a` or `b`.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_into(
        &self,
        a: &GpuTensor,
        trans_a: bool,
        b: &GpuTensor,
        trans_b: bool,
        alpha: f32,
        c: &GpuTensor,
        accumulate: bool,
    ) -> Result<()> {
        const OP: &str = "matmul";
        let (ar, ac) = a.dims2(OP, "a")?;
        let (br, bc) = b.dims2(OP, "b")?;
        let (m, k) = if trans_a { (ac, ar) } else { (ar, ac) };
        let (kb, n) = if trans_b { (bc, br) } else { (br, bc) };
        if k != kb {
            return Err(shape_err(
                OP,
                format!("inner dimensions differ: op(a) is [{m}, {k}], op(b) is [{kb}, {n}]"),
            ));
        }
        c.expect(OP, "c", &[m, n])?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        if k == 0 {
            if !accumulate {
                self.fill(c, 0.0);
            }
            return Ok(());
        }
        let (a_rs, a_cs) = if trans_a { (1, m) } else { (k, 1) };
        let (b_rs, b_cs) = if trans_b { (1, k) } else { (n, 1) };
        let grid_x = dim_u32(OP, n.div_ceil(TILE_N))?;
        let grid_y = dim_u32(OP, m.div_ceil(TILE_M))?;
        if grid_y > 65_535 || grid_x > 65_535 {
            return Err(shape_err(
                OP,
                format!("[{m}, {n}] output needs too many tiles"),
            ));
        }
        // SAFETY: every global access is guarded by the m/n/k bounds checked above; shared
        // and local indices are in range by construction (16×16 units, 64×16 / 16×64 tiles).
        unsafe {
            gemm_kernel::launch_unchecked(
                &self.client,
                CubeCount::Static(grid_x, grid_y, 1),
                CubeDim::new_2d(16, 16),
                a.arg(),
                b.arg(),
                c.arg(),
                dim_u32(OP, m)?,
                dim_u32(OP, n)?,
                dim_u32(OP, k)?,
                dim_u32(OP, a_rs)?,
                dim_u32(OP, a_cs)?,
                dim_u32(OP, b_rs)?,
                dim_u32(OP, b_cs)?,
                alpha,
                accumulate,
            );
        }
        Ok(())
    }

    /// `alpha · op(a) op(b)` into a new tensor.
    pub fn matmul(
        &self,
        a: &GpuTensor,
        trans_a: bool,
        b: &GpuTensor,
        trans_b: bool,
        alpha: f32,
    ) -> Result<GpuTensor> {
        let (ar, ac) = a.dims2("matmul", "a")?;
        let (br, bc) = b.dims2("matmul", "b")?;
        let m = if trans_a { ac } else { ar };
        let n = if trans_b { br } else { bc };
        let c = self.uninit(&[m, n]);
        self.matmul_into(a, trans_a, b, trans_b, alpha, &c, false)?;
        Ok(c)
    }
}
