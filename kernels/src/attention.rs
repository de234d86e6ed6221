//! Causal multi-head attention with grouped-query heads, forward and backward.
//!
//! Layouts (HF, row-major, tokens `b · seq + t`): `q`, `dq`, `out` [batch·seq, heads·head_dim];
//! `k`, `v` [batch·seq, kv_heads·head_dim]; the saved probabilities `probs`
//! [batch·heads, seq, seq]. Query head `h` reads key/value head `h / (heads / kv_heads)`.
//!
//! Forward: `S = q kᵀ / sqrt(head_dim)` (one batched GEMM over (sequence, head)), a causal
//! softmax in place (one cube per row, keys `s > t` get probability 0), `out = P v`.
//! Backward: `dP = dout vᵀ`, `dS = P ⊙ (dP − rowsum(dP ⊙ P))` (in place), `dq = dS k / √d`, and,
//! per member `g` of each query group, `dk += dSᵀ q / √d`, `dv += Pᵀ dout` (one launch per `g`
//! so no two cubes write the same key/value element).

use cubecl::prelude::*;

use crate::bgemm::{BatchedGemm, Operand};
use crate::error::{shape_err, Result};
use crate::gpu::{block_max, block_sum, dim_u32, grid, Gpu, GpuTensor, ROW_CUBE};

#[cube(launch)]
fn causal_softmax_kernel(s: &mut [f32], seq: u32, rows: u32, #[comptime] block: usize) {
    let row = CUBE_POS;
    let tid = UNIT_POS as usize;
    let seq = seq as usize;
    let valid = row < rows as usize;
    let t = row % seq;
    let base = row * seq;
    let mut smem = Shared::<[f32]>::new_slice(block);

    let mut mx = f32::new(-3.0e38);
    if valid {
        let mut j = tid;
        while j <= t {
            mx = f32::max(mx, s[base + j]);
            j += block;
        }
    }
    let row_max = block_max(&mut smem, mx, block);
    let mut se = 0.0f32;
    if valid {
        let mut j = tid;
        while j <= t {
            se += f32::exp(s[base + j] - row_max);
            j += block;
        }
    }
    let sum = block_sum(&mut smem, se, block);
    if valid {
        let mut j = tid;
        while j < seq {
            let mut p = 0.0f32;
            if j <= t {
                p = f32::exp(s[base + j] - row_max) / sum;
            }
            s[base + j] = p;
            j += block;
        }
    }
}

#[cube(launch)]
fn softmax_bwd_kernel(p: &[f32], dp: &mut [f32], seq: u32, rows: u32, #[comptime] block: usize) {
    let row = CUBE_POS;
    let tid = UNIT_POS as usize;
    let seq = seq as usize;
    let valid = row < rows as usize;
    let base = row * seq;
    let mut smem = Shared::<[f32]>::new_slice(block);
    let mut dot = 0.0f32;
    if valid {
        let mut j = tid;
        while j < seq {
            dot += p[base + j] * dp[base + j];
            j += block;
        }
    }
    let total = block_sum(&mut smem, dot, block);
    if valid {
        let mut j = tid;
        while j < seq {
            dp[base + j] = p[base + j] * (dp[base + j] - total);
            j += block;
        }
    }
}

/// The shapes of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionDims {
    /// Sequences.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (divides `heads`).
    pub kv_heads: usize,
    /// Features per head.
    pub head_dim: usize,
}

impl AttentionDims {
    fn check(&self, op: &'static str) -> Result<()> {
        let d = self;
        if d.batch == 0 || d.seq == 0 || d.heads == 0 || d.kv_heads == 0 || d.head_dim == 0 {
            return Err(shape_err(op, format!("empty dimension in {d:?}")));
        }
        if !d.heads.is_multiple_of(d.kv_heads) {
            return Err(shape_err(op, format!("kv_heads must divide heads: {d:?}")));
        }
        Ok(())
    }

    fn group(&self) -> usize {
        self.heads / self.kv_heads
    }

    /// Query-layout operand ([seq, head_dim] of head `h` in sequence `b`), batch `z = b·heads+h`.
    fn q_op(&self) -> Operand {
        let w = self.heads * self.head_dim;
        Operand {
            base: 0,
            outer: self.seq * w,
            inner: self.head_dim,
            div: 1,
            rs: w,
            cs: 1,
        }
    }

    /// Key/value-layout operand for batch `z = b·heads + h` (head `h / group`).
    fn kv_op(&self) -> Operand {
        let w = self.kv_heads * self.head_dim;
        Operand {
            base: 0,
            outer: self.seq * w,
            inner: self.head_dim,
            div: self.group(),
            rs: w,
            cs: 1,
        }
    }

    /// Probabilities `[seq, seq]` of batch `z = b·heads + h`.
    fn p_op(&self) -> Operand {
        Operand {
            base: 0,
            outer: self.heads * self.seq * self.seq,
            inner: self.seq * self.seq,
            div: 1,
            rs: self.seq,
            cs: 1,
        }
    }

    /// Per query-head GEMM over `z = b·heads + h`.
    fn per_head(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: Operand,
        b: Operand,
        c: Operand,
    ) -> BatchedGemm {
        BatchedGemm {
            batch: self.batch * self.heads,
            zi: self.heads,
            m,
            n,
            k,
            a,
            b,
            c,
        }
    }

    /// Per key/value-head GEMM over `z = b·kv_heads + j`, reading query head `j·group + g`
    /// through `a` and `b` (built in the query layouts, re-based here).
    #[allow(clippy::too_many_arguments)]
    fn per_kv_head(
        &self,
        g: usize,
        m: usize,
        n: usize,
        k: usize,
        a: Operand,
        b: Operand,
        c: Operand,
    ) -> BatchedGemm {
        let group = self.group();
        let rebase = |o: Operand| Operand {
            base: o.base + g * o.inner,
            inner: o.inner * group,
            div: 1,
            ..o
        };
        BatchedGemm {
            batch: self.batch * self.kv_heads,
            zi: self.kv_heads,
            m,
            n,
            k,
            a: rebase(a),
            b: rebase(b),
            c: Operand { div: 1, ..c },
        }
    }

    fn expect_inputs(
        &self,
        op: &'static str,
        q: &GpuTensor,
        k: &GpuTensor,
        v: &GpuTensor,
    ) -> Result<()> {
        self.check(op)?;
        let n = self.batch * self.seq;
        let want_q = n * self.heads * self.head_dim;
        let want_kv = n * self.kv_heads * self.head_dim;
        for (name, t, want) in [("q", q, want_q), ("k", k, want_kv), ("v", v, want_kv)] {
            if t.len() != want {
                return Err(shape_err(
                    op,
                    format!(
                        "{name} must hold {want} values for {self:?}, has {:?}",
                        t.shape
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl Gpu {
    /// Causal attention forward into `out` (query layout) and `probs` [batch·heads, seq, seq].
    pub fn attention_forward_into(
        &self,
        d: &AttentionDims,
        q: &GpuTensor,
        k: &GpuTensor,
        v: &GpuTensor,
        out: &GpuTensor,
        probs: &GpuTensor,
    ) -> Result<()> {
        const OP: &str = "attention_forward";
        d.expect_inputs(OP, q, k, v)?;
        if out.len() != q.len() {
            return Err(shape_err(
                OP,
                format!("out must match q, got {:?}", out.shape),
            ));
        }
        let rows = d.batch * d.heads * d.seq;
        probs.expect(OP, "probs", &[d.batch * d.heads, d.seq, d.seq])?;
        let scale = 1.0 / (d.head_dim as f32).sqrt();
        let (s, hd) = (d.seq, d.head_dim);
        self.batched_matmul_into(
            &d.per_head(s, s, hd, d.q_op(), d.kv_op().t(), d.p_op()),
            q,
            k,
            scale,
            probs,
            false,
        )?;
        causal_softmax_kernel::launch(
            &self.client,
            grid(rows),
            CubeDim::new_1d(ROW_CUBE),
            probs.arg(),
            dim_u32(OP, s)?,
            dim_u32(OP, rows)?,
            ROW_CUBE as usize,
        );
        self.batched_matmul_into(
            &d.per_head(s, hd, s, d.p_op(), d.kv_op(), d.q_op()),
            probs,
            v,
            1.0,
            out,
            false,
        )?;
        Ok(())
    }

    /// Causal attention forward into new tensors: `(out, probs)`.
    pub fn attention_forward(
        &self,
        d: &AttentionDims,
        q: &GpuTensor,
        k: &GpuTensor,
        v: &GpuTensor,
    ) -> Result<(GpuTensor, GpuTensor)> {
        let out = self.uninit(&q.shape);
        let probs = self.uninit(&[d.batch * d.heads, d.seq, d.seq]);
        self.attention_forward_into(d, q, k, v, &out, &probs)?;
        Ok((out, probs))
    }

    /// Causal attention backward into `dq`, `dk`, `dv` (overwritten). `scratch` must have the
    /// shape of `probs`; it ends holding `dS`.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_backward_into(
        &self,
        d: &AttentionDims,
        q: &GpuTensor,
        k: &GpuTensor,
        v: &GpuTensor,
        probs: &GpuTensor,
        dout: &GpuTensor,
        dq: &GpuTensor,
        dk: &GpuTensor,
        dv: &GpuTensor,
        scratch: &GpuTensor,
    ) -> Result<()> {
        const OP: &str = "attention_backward";
        d.expect_inputs(OP, q, k, v)?;
        d.expect_inputs(OP, dq, dk, dv)?;
        if dout.len() != q.len() {
            return Err(shape_err(
                OP,
                format!("dout must match q, got {:?}", dout.shape),
            ));
        }
        let pshape = [d.batch * d.heads, d.seq, d.seq];
        probs.expect(OP, "probs", &pshape)?;
        scratch.expect(OP, "scratch", &pshape)?;
        let rows = d.batch * d.heads * d.seq;
        let scale = 1.0 / (d.head_dim as f32).sqrt();
        let (s, hd) = (d.seq, d.head_dim);
        // dP = dout vᵀ
        self.batched_matmul_into(
            &d.per_head(s, s, hd, d.q_op(), d.kv_op().t(), d.p_op()),
            dout,
            v,
            1.0,
            scratch,
            false,
        )?;
        // dS = P ⊙ (dP − rowsum(P ⊙ dP))
        softmax_bwd_kernel::launch(
            &self.client,
            grid(rows),
            CubeDim::new_1d(ROW_CUBE),
            probs.arg(),
            scratch.arg(),
            dim_u32(OP, s)?,
            dim_u32(OP, rows)?,
            ROW_CUBE as usize,
        );
        // dq = scale · dS k
        self.batched_matmul_into(
            &d.per_head(s, hd, s, d.p_op(), d.kv_op(), d.q_op()),
            scratch,
            k,
            scale,
            dq,
            false,
        )?;
        let kv_out = Operand {
            inner: d.head_dim,
            ..d.kv_op()
        };
        for g in 0..d.group() {
            // dk += scale · dSᵀ q ; dv += Pᵀ dout, over the query heads of each group
            let gk = d.per_kv_head(g, s, hd, s, d.p_op().t(), d.q_op(), kv_out);
            self.batched_matmul_into(&gk, scratch, q, scale, dk, g > 0)?;
            let gv = d.per_kv_head(g, s, hd, s, d.p_op().t(), d.q_op(), kv_out);
            self.batched_matmul_into(&gv, probs, dout, 1.0, dv, g > 0)?;
        }
        Ok(())
    }

    /// Causal attention backward into new tensors: `(dq, dk, dv)`.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_backward(
        &self,
        d: &AttentionDims,
        q: &GpuTensor,
        k: &GpuTensor,
        v: &GpuTensor,
        probs: &GpuTensor,
        dout: &GpuTensor,
    ) -> Result<(GpuTensor, GpuTensor, GpuTensor)> {
        let (dq, dk, dv) = (
            self.uninit(&q.shape),
            self.uninit(&k.shape),
            self.uninit(&v.shape),
        );
        let scratch = self.uninit(&probs.shape);
        self.attention_backward_into(d, q, k, v, probs, dout, &dq, &dk, &dv, &scratch)?;
        Ok((dq, dk, dv))
    }
}
