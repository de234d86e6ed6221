//! LoRA linear layer, forward and backward, as GEMM launches on the device.
//!
//! Forward: `xa = x Aᵀ`, `y = x Wᵀ + s · xa Bᵀ` (3 GEMMs, the last accumulating into `y`).
//! Backward with `W` frozen: `g = dy B`, `dx = dy W + s · g A`, `dA = s · gᵀ x`, `dB = s · dyᵀ xa`.

use crate::error::{shape_err, Result};
use crate::gpu::{Gpu, GpuTensor};
use crate::reference::LoraDims;

/// What the forward pass leaves on the device.
#[derive(Clone, Debug)]
pub struct LoraForward {
    /// `x Wᵀ + s · xa Bᵀ`, [n, d_out].
    pub y: GpuTensor,
    /// `x Aᵀ`, [n, r], needed by the backward pass.
    pub xa: GpuTensor,
}

/// The trainable gradients and the input gradient.
#[derive(Clone, Debug)]
pub struct LoraGrads {
    /// [n, d_in]
    pub dx: GpuTensor,
    /// [r, d_in]
    pub da: GpuTensor,
    /// [d_out, r]
    pub db: GpuTensor,
}

const OP_F: &str = "lora_forward";
const OP_B: &str = "lora_backward";

/// Reads the dims off `x`, `w`, `a`, `b` and checks they agree.
pub(crate) fn lora_dims(
    op: &'static str,
    x: &GpuTensor,
    w: &GpuTensor,
    a: &GpuTensor,
    b: &GpuTensor,
) -> Result<LoraDims> {
    let (n, d_in) = x.dims2(op, "x")?;
    let (d_out, _) = w.dims2(op, "w")?;
    let (r, _) = a.dims2(op, "a")?;
    w.expect(op, "w", &[d_out, d_in])?;
    a.expect(op, "a", &[r, d_in])?;
    b.expect(op, "b", &[d_out, r])?;
    Ok(LoraDims { n, d_in, d_out, r })
}

impl Gpu {
    /// LoRA forward into caller-provided `y` [n, d_out] and `xa` [n, r].
    #[allow(clippy::too_many_arguments)]
    pub fn lora_forward_into(
        &self,
        x: &GpuTensor,
        w: &GpuTensor,
        a: &GpuTensor,
        b: &GpuTensor,
        scale: f32,
        y: &GpuTensor,
        xa: &GpuTensor,
    ) -> Result<()> {
        let d = lora_dims(OP_F, x, w, a, b)?;
        y.expect(OP_F, "y", &[d.n, d.d_out])?;
        xa.expect(OP_F, "xa", &[d.n, d.r])?;
        self.matmul_into(x, false, a, true, 1.0, xa, false)?;
        self.matmul_into(x, false, w, true, 1.0, y, false)?;
        self.matmul_into(xa, false, b, true, scale, y, true)?;
        Ok(())
    }

    /// LoRA forward into new tensors.
    pub fn lora_forward(
        &self,
        x: &GpuTensor,
        w: &GpuTensor,
        a: &GpuTensor,
        b: &GpuTensor,
        scale: f32,
    ) -> Result<LoraForward> {
        let d = lora_dims(OP_F, x, w, a, b)?;
        let out = LoraForward {
            y: self.uninit(&[d.n, d.d_out]),
            xa: self.uninit(&[d.n, d.r]),
        };
        self.lora_forward_into(x, w, a, b, scale, &out.y, &out.xa)?;
        Ok(out)
    }

    /// LoRA backward into caller-provided gradients (`grads` shapes as in [`LoraGrads`]).
    #[allow(clippy::too_many_arguments)]
    pub fn lora_backward_into(
        &self,
        x: &GpuTensor,
        w: &GpuTensor,
        a: &GpuTensor,
        b: &GpuTensor,
        xa: &GpuTensor,
        dy: &GpuTensor,
        scale: f32,
        grads: &LoraGrads,
    ) -> Result<()> {
        let d = lora_dims(OP_B, x, w, a, b)?;
        xa.expect(OP_B, "xa", &[d.n, d.r])?;
        dy.expect(OP_B, "dy", &[d.n, d.d_out])?;
        grads.dx.expect(OP_B, "dx", &[d.n, d.d_in])?;
        grads.da.expect(OP_B, "da", &[d.r, d.d_in])?;
        grads.db.expect(OP_B, "db", &[d.d_out, d.r])?;
        let g = self.uninit(&[d.n, d.r]);
        self.matmul_into(dy, false, b, false, 1.0, &g, false)?;
        self.matmul_into(dy, false, w, false, 1.0, &grads.dx, false)?;
        self.matmul_into(&g, false, a, false, scale, &grads.dx, true)?;
        self.matmul_into(&g, true, x, false, scale, &grads.da, false)?;
        self.matmul_into(dy, true, xa, false, scale, &grads.db, false)?;
        Ok(())
    }

    /// LoRA backward into new tensors.
    #[allow(clippy::too_many_arguments)]
    pub fn lora_backward(
        &self,
        x: &GpuTensor,
        w: &GpuTensor,
        a: &GpuTensor,
        b: &GpuTensor,
        xa: &GpuTensor,
        dy: &GpuTensor,
        scale: f32,
    ) -> Result<LoraGrads> {
        let d = lora_dims(OP_B, x, w, a, b)?;
        let grads = LoraGrads {
            dx: self.uninit(&[d.n, d.d_in]),
            da: self.uninit(&[d.r, d.d_in]),
            db: self.uninit(&[d.d_out, d.r]),
        };
        self.lora_backward_into(x, w, a, b, xa, dy, scale, &grads)?;
        Ok(grads)
    }

    /// Host convenience: uploads, runs [`Gpu::lora_forward_into`] on NaN-filled outputs, returns
    /// `(y, xa)`.
    #[allow(clippy::too_many_arguments)]
    pub fn lora_forward_host(
        &self,
        x: &[f32],
        w: &[f32],
        a: &[f32],
        b: &[f32],
        d: LoraDims,
        scale: f32,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let (xd, wd, ad, bd) = self.upload_lora(x, w, a, b, d)?;
        let y = self.full(&[d.n, d.d_out], f32::NAN);
        let xa = self.full(&[d.n, d.r], f32::NAN);
        self.lora_forward_into(&xd, &wd, &ad, &bd, scale, &y, &xa)?;
        Ok((self.download(&y)?, self.download(&xa)?))
    }

    /// Host convenience: returns `(dx, da, db)`, computed into NaN-filled outputs.
    #[allow(clippy::too_many_arguments)]
    pub fn lora_backward_host(
        &self,
        x: &[f32],
        w: &[f32],
        a: &[f32],
        b: &[f32],
        xa: &[f32],
        dy: &[f32],
        d: LoraDims,
        scale: f32,
    ) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let (xd, wd, ad, bd) = self.upload_lora(x, w, a, b, d)?;
        let xad = self.upload(xa, &[d.n, d.r])?;
        let dyd = self.upload(dy, &[d.n, d.d_out])?;
        let grads = LoraGrads {
            dx: self.full(&[d.n, d.d_in], f32::NAN),
            da: self.full(&[d.r, d.d_in], f32::NAN),
            db: self.full(&[d.d_out, d.r], f32::NAN),
        };
        self.lora_backward_into(&xd, &wd, &ad, &bd, &xad, &dyd, scale, &grads)?;
        Ok((
            self.download(&grads.dx)?,
            self.download(&grads.da)?,
            self.download(&grads.db)?,
        ))
    }

    fn upload_lora(
        &self,
        x: &[f32],
        w: &[f32],
        a: &[f32],
        b: &[f32],
        d: LoraDims,
    ) -> Result<(GpuTensor, GpuTensor, GpuTensor, GpuTensor)> {
        if d.n == 0 || d.d_in == 0 || d.d_out == 0 || d.r == 0 {
            return Err(shape_err(OP_F, format!("empty dimension in {d:?}")));
        }
        Ok((
            self.upload(x, &[d.n, d.d_in])?,
            self.upload(w, &[d.d_out, d.d_in])?,
            self.upload(a, &[d.r, d.d_in])?,
            self.upload(b, &[d.d_out, d.r])?,
        ))
    }
}
