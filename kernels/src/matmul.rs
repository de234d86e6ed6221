//! `C = alpha · op(A) op(B) (+ C)` for plain matrices, with transposes as strides: one entry of the
//! batched GEMM in [`crate::bgemm`], whose tiled kernel serves both.
//!
//! Why not cubecl's own matmul: in the 0.11 line it lives in the separate `cubek-matmul` crate
//! (0.3.x), a ~37k-line generic kernel library built around tensor-core/plane routines and
//! autotuning. It would multiply this crate's build time on a 2-core machine and its selection
//! logic is tuned for real GPUs, not lavapipe; the LoRA shapes here (a rank-r side path next to
//! one frozen projection) are served well enough by one straightforward kernel whose every line
//! we can test. Swapping it in later only touches [`Gpu::matmul_into`].

use crate::bgemm::{BatchedGemm, Operand};
use crate::error::{shape_err, Result};
use crate::gpu::{Gpu, GpuTensor};

/// A `[rows, cols]` view with the given row and column strides, as the one entry of a batch.
fn strided(rs: usize, cs: usize) -> Operand {
    Operand {
        base: 0,
        outer: 0,
        inner: 0,
        div: 1,
        rs,
        cs,
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
        let one = BatchedGemm {
            batch: 1,
            zi: 1,
            m,
            n,
            k,
            a: strided(a_rs, a_cs),
            b: strided(b_rs, b_cs),
            c: strided(n, 1),
        };
        self.batched_matmul_into(&one, a, b, alpha, c, accumulate)
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
