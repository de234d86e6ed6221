//! Cross-entropy with per-row weights and a caller-given denominator, for micro-batching:
//! `loss = Σ_rows weight_i · nll_i / denominator`, `dlogits_i = weight_i · (softmax_i − onehot_i)
//! / denominator`. A row with weight 0 or a target `≥ vocab` contributes nothing (and gets a zero
//! gradient). Summing the losses of micro-batches that share one denominator (the big batch's
//! token count) gives the big batch's mean.

use cubecl::prelude::*;

use crate::error::{shape_err, Result};
use crate::gpu::{block_max, block_sum, dim_u32, grid, Gpu, GpuIndices, GpuTensor, ROW_CUBE};
use crate::loss::sum_kernel;

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn wce_row_kernel(
    logits: &[f32],
    targets: &[u32],
    weights: &[f32],
    row_loss: &mut [f32],
    dlogits: &mut [f32],
    vocab: u32,
    inv_denominator: f32,
    #[comptime] block: usize,
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
    let coef = w * inv_denominator;

    if in_range {
        if tid == 0 {
            let mut l = 0.0f32;
            if valid {
                l = (row_max + f32::ln(sum_exp) - logits[base + target as usize]) * coef;
            }
            row_loss[row] = l;
        }
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

const OP: &str = "weighted_cross_entropy";

impl Gpu {
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
        let (n, vocab) = logits.dims2(OP, "logits")?;
        if targets.len != n {
            return Err(shape_err(
                OP,
                format!("targets ({}) must have n = {n} entries", targets.len),
            ));
        }
        weights.expect(OP, "weights", &[n])?;
        loss.expect(OP, "loss", &[1])?;
        dlogits.expect(OP, "dlogits", &[n, vocab])?;
        if n == 0 || vocab == 0 {
            return Err(shape_err(OP, "logits must not be empty"));
        }
        if !(denominator > 0.0 && denominator.is_finite()) {
            return Err(shape_err(
                OP,
                format!("denominator must be positive, got {denominator}"),
            ));
        }
        let row_loss = self.uninit(&[n]);
        wce_row_kernel::launch(
            &self.client,
            grid(n),
            CubeDim::new_1d(ROW_CUBE),
            logits.arg(),
            targets.arg(),
            weights.arg(),
            row_loss.arg(),
            dlogits.arg(),
            dim_u32(OP, vocab)?,
            1.0 / denominator,
            ROW_CUBE as usize,
        );
        sum_kernel::launch(
            &self.client,
            CubeCount::Static(1, 1, 1),
            CubeDim::new_1d(ROW_CUBE),
            row_loss.arg(),
            loss.arg(),
            ROW_CUBE as usize,
        );
        Ok(())
    }

    /// The negative log-likelihood of each row's target [n] (0 where the target is `≥ vocab`),
    /// without a gradient: per-token log-probs for DPO, which sums them per sequence on the host.
    pub fn token_nll(&self, logits: &GpuTensor, targets: &GpuIndices) -> Result<GpuTensor> {
        let (n, vocab) = logits.dims2(OP, "logits")?;
        if targets.len != n {
            return Err(shape_err(
                OP,
                format!("targets ({}) must have n = {n} entries", targets.len),
            ));
        }
        let row_loss = self.uninit(&[n]);
        // The kernel writes a gradient too; this one is scratch.
        let scratch = self.uninit(&[n, vocab]);
        let ones = self.full(&[n], 1.0);
        wce_row_kernel::launch(
            &self.client,
            grid(n),
            CubeDim::new_1d(ROW_CUBE),
            logits.arg(),
            targets.arg(),
            ones.arg(),
            row_loss.arg(),
            scratch.arg(),
            dim_u32(OP, vocab)?,
            1.0,
            ROW_CUBE as usize,
        );
        Ok(row_loss)
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
        let ld = self.upload(logits, &[n, vocab])?;
        let td = self.upload_indices(targets);
        let wd = self.upload(weights, &[weights.len()])?;
        let loss = self.full(&[1], f32::NAN);
        let dl = self.full(&[n, vocab], f32::NAN);
        self.weighted_cross_entropy_into(&ld, &td, &wd, denominator, &loss, &dl)?;
        Ok((self.download(&loss)?[0], self.download(&dl)?))
    }
}
