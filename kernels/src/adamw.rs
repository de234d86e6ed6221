//! One AdamW step in place on `param`, `m`, `v` (PyTorch's decoupled weight decay).
//!
//! The bias corrections are folded on the host (in f64) into `step_size = lr / (1 − β1ᵗ)` and
//! `sqrt(1 − β2ᵗ)`, exactly as PyTorch's single-tensor implementation does.

use cubecl::prelude::*;

use crate::error::{KernelError, Result};
use crate::gpu::{elemwise_count, Gpu, GpuTensor, ELEMWISE_CUBE};
use crate::reference::{adamw_step_factors, AdamWConfig};

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn adamw_kernel(
    param: &mut [f32],
    grad: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    decay: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    step_size: f32,
    bc2_sqrt: f32,
) {
    let i = ABSOLUTE_POS;
    if i < param.len() {
        let g = grad[i];
        let mi = beta1 * m[i] + (1.0 - beta1) * g;
        let vi = beta2 * v[i] + (1.0 - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        let denom = f32::sqrt(vi) / bc2_sqrt + eps;
        param[i] = param[i] * decay - step_size * mi / denom;
    }
}

const OP: &str = "adamw";

impl Gpu {
    /// One AdamW step `t` (1-based) on `param` with `grad`, updating `param`, `m`, `v` in place.
    pub fn adamw_step(
        &self,
        param: &GpuTensor,
        grad: &GpuTensor,
        m: &GpuTensor,
        v: &GpuTensor,
        cfg: &AdamWConfig,
        t: u32,
    ) -> Result<()> {
        if t == 0 {
            return Err(KernelError::Value {
                op: OP,
                what: "AdamW steps count from 1".into(),
            });
        }
        grad.expect(OP, "grad", &param.shape)?;
        m.expect(OP, "m", &param.shape)?;
        v.expect(OP, "v", &param.shape)?;
        if param.is_empty() {
            return Ok(());
        }
        let (step_size, bc2_sqrt) = adamw_step_factors(cfg, t);
        adamw_kernel::launch(
            &self.client,
            elemwise_count(param.len()),
            CubeDim::new_1d(ELEMWISE_CUBE),
            param.arg(),
            grad.arg(),
            m.arg(),
            v.arg(),
            1.0 - cfg.lr * cfg.weight_decay,
            cfg.beta1,
            cfg.beta2,
            cfg.eps,
            step_size,
            bc2_sqrt,
        );
        Ok(())
    }

    /// Host convenience: runs one step on uploaded copies and returns `(param, m, v)`.
    pub fn adamw_step_host(
        &self,
        param: &[f32],
        grad: &[f32],
        m: &[f32],
        v: &[f32],
        cfg: &AdamWConfig,
        t: u32,
    ) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let shape = [param.len()];
        let p = self.upload(param, &shape)?;
        let g = self.upload(grad, &shape)?;
        let md = self.upload(m, &shape)?;
        let vd = self.upload(v, &shape)?;
        self.adamw_step(&p, &g, &md, &vd, cfg, t)?;
        Ok((self.download(&p)?, self.download(&md)?, self.download(&vd)?))
    }
}
