//! Softmax cross-entropy over `logits` [n, vocab] with u32 targets: one row kernel, three uses.
//!
//! A row counts when its weight is non-zero and its target is `< vocab` (an out-of-range target is
//! treated as weight 0 rather than read out of bounds). The row kernel writes `w_i · nll_i · inv`
//! and, when asked, `dlogits_i = w_i · (softmax_i − onehot_i) · inv` (0 on rows that do not
//! count), where `inv` is a 1-element device tensor; one cube then sums the per-row losses.
//! - [`Gpu::cross_entropy_into`]: the mean over the rows whose mask (0.0 or 1.0) is non-zero. A
//!   first launch counts them and writes `inv = 1 / max(count, 1)` on the device, so the loss needs
//!   no trip to the host (0 when nothing counts).
//! - [`Gpu::weighted_cross_entropy_into`], for micro-batching: `inv = 1 / denominator`, given by the
//!   caller. Summing the losses of micro-batches that share one denominator (the big batch's token
//!   count) gives the big batch's mean.
//! - [`Gpu::token_nll`]: each row's negative log-likelihood, without a gradient.

use cubecl::prelude::*;

use crate::error::{shape_err, KernelError, Result};
use crate::gpu::{block_max, block_sum, dim_u32, grid, Gpu, GpuIndices, GpuTensor, ROW_CUBE};

/// `inv[0] = 1 / max(rows that count, 1)`.
#[cube(launch)]
fn ce_inv_count_kernel(
    targets: &[u32],
    mask: &[f32],
    inv: &mut [f32],
    vocab: u32,
    #[comptime] block: usize,
) {
    let tid = UNIT_POS as usize;
    let n = targets.len();
    let mut smem = Shared::<[f32]>::new_slice(block);
    let mut c = 0.0f32;
    let mut i = tid;
    while i < n {
        if mask[i] != 0.0 && targets[i] < vocab {
            c += 1.0;
        }
        i += block;
    }
    let total = block_sum(&mut smem, c, block);
    if tid == 0 {
        inv[0] = 1.0f32 / f32::max(total, 1.0);
    }
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn ce_row_kernel(
    logits: &[f32],
    targets: &[u32],
    weights: &[f32],
    inv: &[f32],
    row_loss: &mut [f32],
    dlogits: &mut [f32],
    vocab: u32,
    #[comptime] block: usize,
    #[comptime] with_grad: bool,
) {
    let row = CUBE_POS;
    let tid = UNIT_POS as usize;
    let n = targets.len();
    let v = vocab as usize;
    let in_range = row < n;
    let mut target = vocab;
    let mut w = 0.0f32;
    let mut valid = false;
    if in_range {
        target = targets[row];
        w = weights[row];
        valid = w != 0.0 && target < vocab;
    }
    let base = row * v;
    let mut smem = Shared::<[f32]>::new_slice(block);

    let mut mx = f32::new(-3.0e38);
    if valid {
        let mut j = tid;
        while j < v {
            mx = f32::max(mx, logits[base + j]);
            j += block;
        }
    }
    let row_max = block_max(&mut smem, mx, block);
    let mut se = 0.0f32;
    if valid {
        let mut j = tid;
        while j < v {
            se += f32::exp(logits[base + j] - row_max);
            j += block;
        }
    }
    let sum_exp = block_sum(&mut smem, se, block);
    let coef = w * inv[0];

    if in_range {
        if tid == 0 {
            let mut l = 0.0f32;
            if valid {
                l = (row_max + f32::ln(sum_exp) - logits[base + target as usize]) * coef;
            }
            row_loss[row] = l;
        }
        if with_grad {
            let mut j = tid;
            while j < v {
                let mut g = 0.0f32;
                if valid {
                    g = f32::exp(logits[base + j] - row_max) / sum_exp;
                    if j == target as usize {
                        g -= 1.0;
                    }
                    g *= coef;
                }
                dlogits[base + j] = g;
                j += block;
            }
        }
    }
}

#[cube(launch)]
pub(crate) fn sum_kernel(values: &[f32], out: &mut [f32], #[comptime] block: usize) {
    let tid = UNIT_POS as usize;
    let n = values.len();
    let mut smem = Shared::<[f32]>::new_slice(block);
    let mut acc = 0.0f32;
    let mut i = tid;
    while i < n {
        acc += values[i];
        i += block;
    }
    let total = block_sum(&mut smem, acc, block);
    if tid == 0 {
        out[0] = total;
    }
}

const OP: &str = "cross_entropy";
const WEIGHTED: &str = "weighted_cross_entropy";
const TOKEN_NLL: &str = "token_nll";

/// `(n, vocab)` of `logits`, after checking that `targets` has n entries and neither is empty.
fn rows_and_vocab(
    op: &'static str,
    logits: &GpuTensor,
    targets: &GpuIndices,
) -> Result<(usize, usize)> {
    let (n, vocab) = logits.dims2(op, "logits")?;
    if targets.len != n {
        return Err(shape_err(
            op,
            format!("targets ({}) must have n = {n} entries", targets.len),
        ));
    }
    if n == 0 || vocab == 0 {
        return Err(shape_err(op, "logits must not be empty"));
    }
    Ok((n, vocab))
}

impl Gpu {
    /// Launches the row kernel: each row's scaled loss into `row_loss` [n] and, when `dlogits` is
    /// given, its gradient there.
    #[allow(clippy::too_many_arguments)]
    fn cross_entropy_rows(
        &self,
        op: &'static str,
        logits: &GpuTensor,
        targets: &GpuIndices,
        weights: &GpuTensor,
        inv: &GpuTensor,
        row_loss: &GpuTensor,
        dlogits: Option<&GpuTensor>,
    ) -> Result<()> {
        let (n, vocab) = logits.dims2(op, "logits")?;
        let dummy;
        let dl_arg = match dlogits {
            Some(dl) => dl.arg(),
            None => {
                dummy = self.uninit(&[1]);
                dummy.arg()
            }
        };
        ce_row_kernel::launch(
            &self.client,
            grid(n),
            CubeDim::new_1d(ROW_CUBE),
            logits.arg(),
            targets.arg(),
            weights.arg(),
            inv.arg(),
            row_loss.arg(),
            dl_arg,
            dim_u32(op, vocab)?,
            ROW_CUBE as usize,
            dlogits.is_some(),
        );
        Ok(())
    }

    fn sum_into(&self, values: &GpuTensor, out: &GpuTensor) {
        sum_kernel::launch(
            &self.client,
            CubeCount::Static(1, 1, 1),
            CubeDim::new_1d(ROW_CUBE),
            values.arg(),
            out.arg(),
            ROW_CUBE as usize,
        );
    }

    /// The mean cross-entropy over the rows whose `mask` [n] (0.0 or 1.0) is non-zero, into
    /// `loss` [1], and, when given, its gradient into `dlogits` [n, vocab] (may not alias `logits`).
    pub fn cross_entropy_into(
        &self,
        logits: &GpuTensor,
        targets: &GpuIndices,
        mask: &GpuTensor,
        loss: &GpuTensor,
        dlogits: Option<&GpuTensor>,
    ) -> Result<()> {
        let (n, vocab) = rows_and_vocab(OP, logits, targets)?;
        mask.expect(OP, "mask", &[n])?;
        loss.expect(OP, "loss", &[1])?;
        if let Some(dl) = dlogits {
            dl.expect(OP, "dlogits", &[n, vocab])?;
        }
        let inv = self.uninit(&[1]);
        ce_inv_count_kernel::launch(
            &self.client,
            CubeCount::Static(1, 1, 1),
            CubeDim::new_1d(ROW_CUBE),
            targets.arg(),
            mask.arg(),
            inv.arg(),
            dim_u32(OP, vocab)?,
            ROW_CUBE as usize,
        );
        let row_loss = self.uninit(&[n]);
        self.cross_entropy_rows(OP, logits, targets, mask, &inv, &row_loss, dlogits)?;
        self.sum_into(&row_loss, loss);
        Ok(())
    }

    /// Cross-entropy forward and backward into new tensors: `(loss [1], dlogits [n, vocab])`.
    pub fn cross_entropy(
        &self,
        logits: &GpuTensor,
        targets: &GpuIndices,
        mask: &GpuTensor,
    ) -> Result<(GpuTensor, GpuTensor)> {
        let loss = self.uninit(&[1]);
        let dl = self.uninit(&logits.shape);
        self.cross_entropy_into(logits, targets, mask, &loss, Some(&dl))?;
        Ok((loss, dl))
    }

    /// Weighted cross-entropy into `loss` [1] and `dlogits` [n, vocab] (must not alias
    /// `logits`); `weights` [n] (0 skips a row), `denominator` > 0.
    pub fn weighted_cross_entropy_into(
        &self,
        logits: &GpuTensor,
        targets: &GpuIndices,
        weights: &GpuTensor,
        denominator: f32,
        loss: &GpuTensor,
        dlogits: &GpuTensor,
    ) -> Result<()> {
        let (n, vocab) = rows_and_vocab(WEIGHTED, logits, targets)?;
        weights.expect(WEIGHTED, "weights", &[n])?;
        loss.expect(WEIGHTED, "loss", &[1])?;
        dlogits.expect(WEIGHTED, "dlogits", &[n, vocab])?;
        if !(denominator > 0.0 && denominator.is_finite()) {
            return Err(shape_err(
                WEIGHTED,
                format!("denominator must be positive, got {denominator}"),
            ));
        }
        // The inverse is taken on the host, so the device multiplies by the same f32 the CPU
        // path does.
        let inv = self.upload(&[1.0 / denominator], &[1])?;
        let row_loss = self.uninit(&[n]);
        self.cross_entropy_rows(
            WEIGHTED,
            logits,
            targets,
            weights,
            &inv,
            &row_loss,
            Some(dlogits),
        )?;
        self.sum_into(&row_loss, loss);
        Ok(())
    }

    /// The negative log-likelihood of each row's target [n] (0 where the target is `≥ vocab`),
    /// without a gradient: per-token log-probs for DPO, which sums them per sequence on the host.
    pub fn token_nll(&self, logits: &GpuTensor, targets: &GpuIndices) -> Result<GpuTensor> {
        let (n, _) = rows_and_vocab(TOKEN_NLL, logits, targets)?;
        let row_loss = self.uninit(&[n]);
        let ones = self.full(&[n], 1.0);
        let inv = self.full(&[1], 1.0);
        self.cross_entropy_rows(TOKEN_NLL, logits, targets, &ones, &inv, &row_loss, None)?;
        Ok(row_loss)
    }

    /// Host convenience: `(loss, dlogits)` computed into NaN-filled outputs; the mask is 0 or 1
    /// per row. Unlike the device path it refuses an unmasked row whose target is out of range, as
    /// that is a caller bug.
    pub fn cross_entropy_host(
        &self,
        logits: &[f32],
        targets: &[u32],
        mask: &[u32],
        n: usize,
        vocab: usize,
    ) -> Result<(f32, Vec<f32>)> {
        if let Some(i) = (0..n.min(targets.len()).min(mask.len()))
            .find(|&i| mask[i] != 0 && targets[i] as usize >= vocab)
        {
            return Err(KernelError::Value {
                op: OP,
                what: format!("row {i} has target {} but vocab is {vocab}", targets[i]),
            });
        }
        let weights: Vec<f32> = mask.iter().map(|&m| f32::from(u8::from(m != 0))).collect();
        self.on_host(
            logits,
            targets,
            &weights,
            n,
            vocab,
            |ld, td, md, loss, dl| self.cross_entropy_into(ld, td, md, loss, Some(dl)),
        )
    }

    /// Host convenience: `(loss, dlogits)` computed into NaN-filled outputs.
    pub fn weighted_cross_entropy_host(
        &self,
        logits: &[f32],
        targets: &[u32],
        weights: &[f32],
        n: usize,
        vocab: usize,
        denominator: f32,
    ) -> Result<(f32, Vec<f32>)> {
        self.on_host(
            logits,
            targets,
            weights,
            n,
            vocab,
            |ld, td, wd, loss, dl| {
                self.weighted_cross_entropy_into(ld, td, wd, denominator, loss, dl)
            },
        )
    }

    /// The host conveniences' common part: uploads the inputs, runs `op` into NaN-filled outputs
    /// (so a test sees any element left unwritten) and downloads `(loss, dlogits)`.
    fn on_host(
        &self,
        logits: &[f32],
        targets: &[u32],
        weights: &[f32],
        n: usize,
        vocab: usize,
        op: impl FnOnce(&GpuTensor, &GpuIndices, &GpuTensor, &GpuTensor, &GpuTensor) -> Result<()>,
    ) -> Result<(f32, Vec<f32>)> {
        let ld = self.upload(logits, &[n, vocab])?;
        let td = self.upload_indices(targets);
        let wd = self.upload(weights, &[weights.len()])?;
        let loss = self.full(&[1], f32::NAN);
        let dl = self.full(&[n, vocab], f32::NAN);
        op(&ld, &td, &wd, &loss, &dl)?;
        Ok((self.download(&loss)?[0], self.download(&dl)?))
    }
}
