//! Small element-wise kernels the decoder needs around the GEMMs: embedding gather, residual
//! adds, dropout-mask products, bias broadcast, the SiLU gate (forward and backward), in-place
//! scaling and a sum of squares (for gradient norms).

use cubecl::prelude::*;

use crate::error::{shape_err, KernelError, Result};
use crate::gpu::{
    block_sum, dim_u32, elemwise_count, Gpu, GpuIndices, GpuTensor, ELEMWISE_CUBE, ROW_CUBE,
};

#[cube(launch)]
fn embedding_kernel(table: &[f32], ids: &[u32], out: &mut [f32], hidden: u32) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        let hidden = hidden as usize;
        let row = i / hidden;
        let col = i % hidden;
        out[i] = table[ids[row] as usize * hidden + col];
    }
}

#[cube(launch)]
fn add_assign_kernel(dst: &mut [f32], src: &[f32]) {
    let i = ABSOLUTE_POS;
    if i < dst.len() {
        dst[i] += src[i];
    }
}

#[cube(launch)]
fn add_kernel(a: &[f32], b: &[f32], out: &mut [f32]) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        out[i] = a[i] + b[i];
    }
}

#[cube(launch)]
fn mul_kernel(a: &[f32], b: &[f32], out: &mut [f32]) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        out[i] = a[i] * b[i];
    }
}

#[cube(launch)]
fn mul_add_assign_kernel(dst: &mut [f32], a: &[f32], b: &[f32]) {
    let i = ABSOLUTE_POS;
    if i < dst.len() {
        dst[i] += a[i] * b[i];
    }
}

#[cube(launch)]
fn bias_add_kernel(y: &mut [f32], bias: &[f32]) {
    let i = ABSOLUTE_POS;
    if i < y.len() {
        y[i] += bias[i % bias.len()];
    }
}

#[cube(launch)]
fn scale_kernel(t: &mut [f32], factor: f32) {
    let i = ABSOLUTE_POS;
    if i < t.len() {
        t[i] *= factor;
    }
}

#[cube(launch)]
fn silu_mul_kernel(g: &[f32], u: &[f32], out: &mut [f32]) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        let x = g[i];
        out[i] = x / (1.0 + f32::exp(-x)) * u[i];
    }
}

#[cube(launch)]
fn silu_mul_bwd_kernel(g: &[f32], u: &[f32], dout: &[f32], dg: &mut [f32], du: &mut [f32]) {
    let i = ABSOLUTE_POS;
    if i < dg.len() {
        let x = g[i];
        let sig = 1.0 / (1.0 + f32::exp(-x));
        let d = dout[i];
        du[i] = d * x * sig;
        dg[i] = d * u[i] * sig * (1.0 + x * (1.0 - sig));
    }
}

/// `out[slot] = Σ values²` (one cube).
#[cube(launch)]
fn sumsq_kernel(values: &[f32], out: &mut [f32], slot: u32, #[comptime] block: usize) {
    let tid = UNIT_POS as usize;
    let n = values.len();
    let mut smem = Shared::<[f32]>::new_slice(block);
    let mut acc = 0.0f32;
    let mut i = tid;
    while i < n {
        let v = values[i];
        acc += v * v;
        i += block;
    }
    let total = block_sum(&mut smem, acc, block);
    if tid == 0 {
        out[slot as usize] = total;
    }
}

fn same_len(op: &'static str, names: &[(&str, &GpuTensor)]) -> Result<usize> {
    let len = names[0].1.len();
    for (name, t) in names {
        if t.len() != len {
            return Err(shape_err(
                op,
                format!("{name} has {} elements, {} has {len}", t.len(), names[0].0),
            ));
        }
    }
    Ok(len)
}

impl Gpu {
    fn launch_dims(&self, len: usize) -> (CubeCount, CubeDim) {
        (elemwise_count(len), CubeDim::new_1d(ELEMWISE_CUBE))
    }

    /// `out[i, :] = table[ids[i], :]` into `out` [ids.len, hidden] from `table` [vocab, hidden].
    /// The ids must be `< vocab` (checked by [`Gpu::embedding_host`] and the model, not here).
    pub fn embedding_into(
        &self,
        table: &GpuTensor,
        ids: &GpuIndices,
        out: &GpuTensor,
    ) -> Result<()> {
        const OP: &str = "embedding";
        let (_, hidden) = table.dims2(OP, "table")?;
        out.expect(OP, "out", &[ids.len, hidden])?;
        if out.is_empty() {
            return Ok(());
        }
        let (count, dim) = self.launch_dims(out.len());
        embedding_kernel::launch(
            &self.client,
            count,
            dim,
            table.arg(),
            ids.arg(),
            out.arg(),
            dim_u32(OP, hidden)?,
        );
        Ok(())
    }

    /// Host convenience for [`Gpu::embedding_into`] (refuses ids ≥ vocab).
    pub fn embedding_host(
        &self,
        table: &[f32],
        vocab: usize,
        hidden: usize,
        ids: &[u32],
    ) -> Result<Vec<f32>> {
        if let Some(i) = ids.iter().position(|&t| t as usize >= vocab) {
            return Err(KernelError::Value {
                op: "embedding",
                what: format!("id {} at {i} is not below vocab {vocab}", ids[i]),
            });
        }
        let t = self.upload(table, &[vocab, hidden])?;
        let out = self.full(&[ids.len(), hidden], f32::NAN);
        self.embedding_into(&t, &self.upload_indices(ids), &out)?;
        self.download(&out)
    }

    /// `dst += src` (same element count).
    pub fn add_assign(&self, dst: &GpuTensor, src: &GpuTensor) -> Result<()> {
        let len = same_len("add_assign", &[("dst", dst), ("src", src)])?;
        if len > 0 {
            let (count, dim) = self.launch_dims(len);
            add_assign_kernel::launch(&self.client, count, dim, dst.arg(), src.arg());
        }
        Ok(())
    }

    /// `out = a + b` (same element count; `out` must not alias `a` or `b`).
    pub fn add_into(&self, a: &GpuTensor, b: &GpuTensor, out: &GpuTensor) -> Result<()> {
        let len = same_len("add", &[("a", a), ("b", b), ("out", out)])?;
        if len > 0 {
            let (count, dim) = self.launch_dims(len);
            add_kernel::launch(&self.client, count, dim, a.arg(), b.arg(), out.arg());
        }
        Ok(())
    }

    /// `out = a ⊙ b` (same element count; `out` must not alias `a` or `b`).
    pub fn mul_into(&self, a: &GpuTensor, b: &GpuTensor, out: &GpuTensor) -> Result<()> {
        let len = same_len("mul", &[("a", a), ("b", b), ("out", out)])?;
        if len > 0 {
            let (count, dim) = self.launch_dims(len);
            mul_kernel::launch(&self.client, count, dim, a.arg(), b.arg(), out.arg());
        }
        Ok(())
    }

    /// `dst += a ⊙ b` (same element count; `dst` must not alias `a` or `b`).
    pub fn mul_add_assign(&self, dst: &GpuTensor, a: &GpuTensor, b: &GpuTensor) -> Result<()> {
        let len = same_len("mul_add_assign", &[("dst", dst), ("a", a), ("b", b)])?;
        if len > 0 {
            let (count, dim) = self.launch_dims(len);
            mul_add_assign_kernel::launch(&self.client, count, dim, dst.arg(), a.arg(), b.arg());
        }
        Ok(())
    }

    /// `y[i, j] += bias[j]` on `y` [n, d], `bias` [d].
    pub fn bias_add(&self, y: &GpuTensor, bias: &GpuTensor) -> Result<()> {
        const OP: &str = "bias_add";
        let (_, d) = y.dims2(OP, "y")?;
        bias.expect(OP, "bias", &[d])?;
        if !y.is_empty() {
            let (count, dim) = self.launch_dims(y.len());
            bias_add_kernel::launch(&self.client, count, dim, y.arg(), bias.arg());
        }
        Ok(())
    }

    /// `t *= factor` in place.
    pub fn scale_in_place(&self, t: &GpuTensor, factor: f32) {
        if !t.is_empty() {
            let (count, dim) = self.launch_dims(t.len());
            scale_kernel::launch(&self.client, count, dim, t.arg(), factor);
        }
    }

    /// `out = silu(g) ⊙ u` (the SwiGLU gate), `silu(x) = x · sigmoid(x)`.
    pub fn silu_mul_into(&self, g: &GpuTensor, u: &GpuTensor, out: &GpuTensor) -> Result<()> {
        let len = same_len("silu_mul", &[("g", g), ("u", u), ("out", out)])?;
        if len > 0 {
            let (count, dim) = self.launch_dims(len);
            silu_mul_kernel::launch(&self.client, count, dim, g.arg(), u.arg(), out.arg());
        }
        Ok(())
    }

    /// Backward of [`Gpu::silu_mul_into`]: `dg`, `du` from `dout`.
    pub fn silu_mul_backward_into(
        &self,
        g: &GpuTensor,
        u: &GpuTensor,
        dout: &GpuTensor,
        dg: &GpuTensor,
        du: &GpuTensor,
    ) -> Result<()> {
        let len = same_len(
            "silu_mul_backward",
            &[("g", g), ("u", u), ("dout", dout), ("dg", dg), ("du", du)],
        )?;
        if len > 0 {
            let (count, dim) = self.launch_dims(len);
            silu_mul_bwd_kernel::launch(
                &self.client,
                count,
                dim,
                g.arg(),
                u.arg(),
                dout.arg(),
                dg.arg(),
                du.arg(),
            );
        }
        Ok(())
    }

    /// `out[slot] = Σ t²` (one cube, so meant for parameter-sized tensors).
    pub fn sum_squares_into(&self, t: &GpuTensor, out: &GpuTensor, slot: usize) -> Result<()> {
        const OP: &str = "sum_squares";
        if slot >= out.len() {
            return Err(shape_err(
                OP,
                format!("slot {slot} outside out {:?}", out.shape),
            ));
        }
        sumsq_kernel::launch(
            &self.client,
            CubeCount::Static(1, 1, 1),
            CubeDim::new_1d(ROW_CUBE),
            t.arg(),
            out.arg(),
            dim_u32(OP, slot)?,
            ROW_CUBE as usize,
        );
        Ok(())
    }
}
