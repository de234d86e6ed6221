//! Rotary position embedding in the Llama/HF `rotate_half` convention.
//!
//! `y = x · cos + rotate_half(x) · sin` with `rotate_half(x) = cat(−x[half:], x[:half])`, on
//! `x` [n_tokens, n_heads, head_dim]. The cos/sin tables [n_tokens, head_dim/2] are built on the
//! host in f64 ([`crate::reference::rope_tables`]), as HF does, so the kernel does no
//! transcendental math. Backward is the same kernel with `sin` negated (the transpose rotation).

use cubecl::prelude::*;

use crate::error::{shape_err, Result};
use crate::gpu::{dim_u32, elemwise_count, Gpu, GpuTensor, ELEMWISE_CUBE};
use crate::reference::rope_tables;

#[cube(launch)]
fn rope_kernel(
    x: &[f32],
    cos: &[f32],
    sin: &[f32],
    y: &mut [f32],
    n_heads: u32,
    head_dim: u32,
    sign: f32,
) {
    let idx = ABSOLUTE_POS;
    if idx < y.len() {
        let head_dim = head_dim as usize;
        let half = head_dim / 2;
        let j = idx % head_dim;
        let token = idx / (head_dim * n_heads as usize);
        if j < half {
            let c = cos[token * half + j];
            let s = sign * sin[token * half + j];
            y[idx] = x[idx] * c - x[idx + half] * s;
        } else {
            let i = j - half;
            let c = cos[token * half + i];
            let s = sign * sin[token * half + i];
            y[idx] = x[idx] * c + x[idx - half] * s;
        }
    }
}

impl Gpu {
    /// Uploads the HF rotary tables `(cos, sin)` [positions.len(), head_dim/2].
    pub fn rope_tables(
        &self,
        positions: &[u32],
        head_dim: usize,
        theta: f64,
    ) -> Result<(GpuTensor, GpuTensor)> {
        if head_dim < 2 || !head_dim.is_multiple_of(2) {
            return Err(shape_err(
                "rope_tables",
                format!("head_dim {head_dim} must be even"),
            ));
        }
        let (cos, sin) = rope_tables(positions, head_dim, theta);
        let shape = [positions.len(), head_dim / 2];
        Ok((self.upload(&cos, &shape)?, self.upload(&sin, &shape)?))
    }

    fn rope_into(
        &self,
        op: &'static str,
        x: &GpuTensor,
        cos: &GpuTensor,
        sin: &GpuTensor,
        y: &GpuTensor,
        sign: f32,
    ) -> Result<()> {
        let [n_tokens, n_heads, head_dim] = x.shape[..] else {
            return Err(shape_err(
                op,
                format!("x must be [n_tokens, n_heads, head_dim], got {:?}", x.shape),
            ));
        };
        if head_dim < 2 || !head_dim.is_multiple_of(2) {
            return Err(shape_err(op, format!("head_dim {head_dim} must be even")));
        }
        cos.expect(op, "cos", &[n_tokens, head_dim / 2])?;
        sin.expect(op, "sin", &[n_tokens, head_dim / 2])?;
        y.expect(op, "output", &x.shape)?;
        if x.is_empty() {
            return Ok(());
        }
        rope_kernel::launch(
            &self.client,
            elemwise_count(x.len()),
            CubeDim::new_1d(ELEMWISE_CUBE),
            x.arg(),
            cos.arg(),
            sin.arg(),
            y.arg(),
            dim_u32(op, n_heads)?,
            dim_u32(op, head_dim)?,
            sign,
        );
        Ok(())
    }

    /// RoPE forward into `y` (same shape as `x`, must not alias it).
    pub fn rope_forward_into(
        &self,
        x: &GpuTensor,
        cos: &GpuTensor,
        sin: &GpuTensor,
        y: &GpuTensor,
    ) -> Result<()> {
        self.rope_into("rope_forward", x, cos, sin, y, 1.0)
    }

    /// RoPE backward (`dx` from `dy`) into `dx` (must not alias `dy`).
    pub fn rope_backward_into(
        &self,
        dy: &GpuTensor,
        cos: &GpuTensor,
        sin: &GpuTensor,
        dx: &GpuTensor,
    ) -> Result<()> {
        self.rope_into("rope_backward", dy, cos, sin, dx, -1.0)
    }

    /// RoPE forward into a new tensor.
    pub fn rope_forward(
        &self,
        x: &GpuTensor,
        cos: &GpuTensor,
        sin: &GpuTensor,
    ) -> Result<GpuTensor> {
        let y = self.uninit(&x.shape);
        self.rope_forward_into(x, cos, sin, &y)?;
        Ok(y)
    }

    /// RoPE backward into a new tensor.
    pub fn rope_backward(
        &self,
        dy: &GpuTensor,
        cos: &GpuTensor,
        sin: &GpuTensor,
    ) -> Result<GpuTensor> {
        let dx = self.uninit(&dy.shape);
        self.rope_backward_into(dy, cos, sin, &dx)?;
        Ok(dx)
    }

    /// Host convenience: forward (`backward == false`) or backward of RoPE at `positions`,
    /// computed into a NaN-filled output.
    #[allow(clippy::too_many_arguments)]
    pub fn rope_host(
        &self,
        x: &[f32],
        positions: &[u32],
        n_heads: usize,
        head_dim: usize,
        theta: f64,
        backward: bool,
    ) -> Result<Vec<f32>> {
        let (cos, sin) = self.rope_tables(positions, head_dim, theta)?;
        let xd = self.upload(x, &[positions.len(), n_heads, head_dim])?;
        let y = self.full(&xd.shape, f32::NAN);
        if backward {
            self.rope_backward_into(&xd, &cos, &sin, &y)?;
        } else {
            self.rope_forward_into(&xd, &cos, &sin, &y)?;
        }
        self.download(&y)
    }
}
