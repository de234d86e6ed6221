//! RMSNorm forward and backward: `y = x / sqrt(mean(x²) + eps) · w` over the rows of `x` [n, d].
//!
//! Forward and the `dx` half of backward run one cube per row with a shared-memory reduction;
//! `dw` (a column sum over rows) runs one unit per column.

use cubecl::prelude::*;

use crate::error::{shape_err, Result};
use crate::gpu::{
    block_sum, dim_u32, elemwise_count, grid, Gpu, GpuTensor, ELEMWISE_CUBE, ROW_CUBE,
};

#[cube(launch)]
fn rmsnorm_fwd_kernel(
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    rstd: &mut [f32],
    d: u32,
    eps: f32,
    #[comptime] block: usize,
) {
    let d = d as usize;
    let row = CUBE_POS;
    let tid = UNIT_POS as usize;
    let valid = row < rstd.len();
    let base = row * d;
    let mut smem = Shared::<[f32]>::new_slice(block);

    let mut ss = 0.0f32;
    if valid {
        let mut j = tid;
        while j < d {
            let v = x[base + j];
            ss += v * v;
            j += block;
        }
    }
    let total = block_sum(&mut smem, ss, block);
    if valid {
        let r = 1.0f32 / f32::sqrt(total / (d as f32) + eps);
        if tid == 0 {
            rstd[row] = r;
        }
        let mut j = tid;
        while j < d {
            y[base + j] = x[base + j] * r * w[j];
            j += block;
        }
    }
}

#[cube(launch)]
fn rmsnorm_bwd_dx_kernel(
    x: &[f32],
    w: &[f32],
    rstd: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    d: u32,
    #[comptime] block: usize,
) {
    let d = d as usize;
    let row = CUBE_POS;
    let tid = UNIT_POS as usize;
    let valid = row < rstd.len();
    let base = row * d;
    let mut smem = Shared::<[f32]>::new_slice(block);

    let mut dot = 0.0f32;
    if valid {
        let mut j = tid;
        while j < d {
            dot += dy[base + j] * w[j] * x[base + j];
            j += block;
        }
    }
    let total = block_sum(&mut smem, dot, block);
    if valid {
        let r = rstd[row];
        let c = r * r * r * total / (d as f32);
        let mut j = tid;
        while j < d {
            dx[base + j] = r * dy[base + j] * w[j] - x[base + j] * c;
            j += block;
        }
    }
}

#[cube(launch)]
fn rmsnorm_bwd_dw_kernel(x: &[f32], rstd: &[f32], dy: &[f32], dw: &mut [f32]) {
    let j = ABSOLUTE_POS;
    let d = dw.len();
    if j < d {
        let n = rstd.len();
        let mut acc = 0.0f32;
        for i in 0..n {
            acc += dy[i * d + j] * x[i * d + j] * rstd[i];
        }
        dw[j] = acc;
    }
}

const OP_F: &str = "rmsnorm_forward";
const OP_B: &str = "rmsnorm_backward";

impl Gpu {
    /// RMSNorm forward into `y` [n, d] and `rstd` [n] (the per-row `1/sqrt(mean(x²)+eps)`).
    pub fn rmsnorm_forward_into(
        &self,
        x: &GpuTensor,
        w: &GpuTensor,
        eps: f32,
        y: &GpuTensor,
        rstd: &GpuTensor,
    ) -> Result<()> {
        let (n, d) = x.dims2(OP_F, "x")?;
        w.expect(OP_F, "w", &[d])?;
        y.expect(OP_F, "y", &[n, d])?;
        rstd.expect(OP_F, "rstd", &[n])?;
        if n == 0 || d == 0 {
            return Err(shape_err(OP_F, "x must not be empty"));
        }
        rmsnorm_fwd_kernel::launch(
            &self.client,
            grid(n),
            CubeDim::new_1d(ROW_CUBE),
            x.arg(),
            w.arg(),
            y.arg(),
            rstd.arg(),
            dim_u32(OP_F, d)?,
            eps,
            ROW_CUBE as usize,
        );
        Ok(())
    }

    /// RMSNorm forward into new tensors: `(y, rstd)`.
    pub fn rmsnorm_forward(
        &self,
        x: &GpuTensor,
        w: &GpuTensor,
        eps: f32,
    ) -> Result<(GpuTensor, GpuTensor)> {
        let (n, d) = x.dims2(OP_F, "x")?;
        let (y, rstd) = (self.uninit(&[n, d]), self.uninit(&[n]));
        self.rmsnorm_forward_into(x, w, eps, &y, &rstd)?;
        Ok((y, rstd))
    }

    /// RMSNorm backward into `dx` [n, d] and `dw` [d].
    #[allow(clippy::too_many_arguments)]
    pub fn rmsnorm_backward_into(
        &self,
        x: &GpuTensor,
        w: &GpuTensor,
        rstd: &GpuTensor,
        dy: &GpuTensor,
        dx: &GpuTensor,
        dw: &GpuTensor,
    ) -> Result<()> {
        let (n, d) = x.dims2(OP_B, "x")?;
        w.expect(OP_B, "w", &[d])?;
        rstd.expect(OP_B, "rstd", &[n])?;
        dy.expect(OP_B, "dy", &[n, d])?;
        dx.expect(OP_B, "dx", &[n, d])?;
        dw.expect(OP_B, "dw", &[d])?;
        if n == 0 || d == 0 {
            return Err(shape_err(OP_B, "x must not be empty"));
        }
        rmsnorm_bwd_dx_kernel::launch(
            &self.client,
            grid(n),
            CubeDim::new_1d(ROW_CUBE),
            x.arg(),
            w.arg(),
            rstd.arg(),
            dy.arg(),
            dx.arg(),
            dim_u32(OP_B, d)?,
            ROW_CUBE as usize,
        );
        rmsnorm_bwd_dw_kernel::launch(
            &self.client,
            elemwise_count(d),
            CubeDim::new_1d(ELEMWISE_CUBE),
            x.arg(),
            rstd.arg(),
            dy.arg(),
            dw.arg(),
        );
        Ok(())
    }

    /// RMSNorm backward into new tensors: `(dx, dw)`.
    pub fn rmsnorm_backward(
        &self,
        x: &GpuTensor,
        w: &GpuTensor,
        rstd: &GpuTensor,
        dy: &GpuTensor,
    ) -> Result<(GpuTensor, GpuTensor)> {
        let (n, d) = x.dims2(OP_B, "x")?;
        let (dx, dw) = (self.uninit(&[n, d]), self.uninit(&[d]));
        self.rmsnorm_backward_into(x, w, rstd, dy, &dx, &dw)?;
        Ok((dx, dw))
    }

    /// Host convenience: `(y, rstd)` computed into NaN-filled outputs.
    pub fn rmsnorm_forward_host(
        &self,
        x: &[f32],
        w: &[f32],
        n: usize,
        d: usize,
        eps: f32,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let (xd, wd) = (self.upload(x, &[n, d])?, self.upload(w, &[d])?);
        let (y, rstd) = (self.full(&[n, d], f32::NAN), self.full(&[n], f32::NAN));
        self.rmsnorm_forward_into(&xd, &wd, eps, &y, &rstd)?;
        Ok((self.download(&y)?, self.download(&rstd)?))
    }

    /// Host convenience: `(dx, dw)` computed into NaN-filled outputs.
    #[allow(clippy::too_many_arguments)]
    pub fn rmsnorm_backward_host(
        &self,
        x: &[f32],
        w: &[f32],
        rstd: &[f32],
        dy: &[f32],
        n: usize,
        d: usize,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let xd = self.upload(x, &[n, d])?;
        let wd = self.upload(w, &[d])?;
        let rd = self.upload(rstd, &[n])?;
        let dyd = self.upload(dy, &[n, d])?;
        let (dx, dw) = (self.full(&[n, d], f32::NAN), self.full(&[d], f32::NAN));
        self.rmsnorm_backward_into(&xd, &wd, &rd, &dyd, &dx, &dw)?;
        Ok((self.download(&dx)?, self.download(&dw)?))
    }
}
