//! Softmax cross-entropy over `logits` [n, vocab] with u32 targets and a per-row u32 mask.
//!
//! A row counts when its mask is non-zero and its target is `< vocab` (an out-of-range target is
//! treated as masked rather than read out of bounds). `loss = Σ_counted (lse − logit[target]) /
//! count` (0 when nothing counts) and `dlogits = (softmax − onehot) / count` on counted rows, 0
//! on the others. Three launches, all on the device: count the rows, one cube per row for its
//! loss and gradient, then one cube sums the per-row losses into a 1-element tensor.

use cubecl::prelude::*;

use crate::error::{shape_err, KernelError, Result};
use crate::gpu::{block_max, block_sum, dim_u32, grid, Gpu, GpuIndices, GpuTensor, ROW_CUBE};

#[cube(launch)]
fn ce_count_kernel(
    targets: &[u32],
    mask: &[u32],
    count: &mut [f32],
    vocab: u32,
    #[comptime] block: usize,
) {
    let tid = UNIT_POS as usize;
    let n = targets.len();
    let mut smem = Shared::<[f32]>::new_slice(block);
    let mut c = 0.0f32;
    let mut i = tid;
    while i < n {
        if mask[i] != 0 && targets[i] < vocab {
            c += 1.0;
        }
        i += block;
    }
    let total = block_sum(&mut smem, c, block);
    if tid == 0 {
        count[0] = total;
    }
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn ce_row_kernel(
    logits: &[f32],
    targets: &[u32],
    mask: &[u32],
    count: &[f32],
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
    let mut valid = false;
    if in_range {
        target = targets[row];
        valid = mask[row] != 0 && target < vocab;
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
    let inv = 1.0f32 / f32::max(count[0], 1.0);

    if in_range {
        if tid == 0 {
            let mut l = 0.0f32;
            if valid {
                l = (row_max + f32::ln(sum_exp) - logits[base + target as usize]) * inv;
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
                    g *= inv;
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

impl Gpu {
    /// Cross-entropy loss into `loss` [1] and, when given, its gradient into `dlogits`
    /// [n, vocab] (may not alias `logits`).
    pub fn cross_entropy_into(
        &self,
        logits: &GpuTensor,
        targets: &GpuIndices,
        mask: &GpuIndices,
        loss: &GpuTensor,
        dlogits: Option<&GpuTensor>,
    ) -> Result<()> {
        let (n, vocab) = logits.dims2(OP, "logits")?;
        if targets.len != n || mask.len != n {
            return Err(shape_err(
                OP,
                format!(
                    "targets ({}) and mask ({}) must have n = {n} entries",
                    targets.len, mask.len
                ),
            ));
        }
        loss.expect(OP, "loss", &[1])?;
        if let Some(dl) = dlogits {
            dl.expect(OP, "dlogits", &[n, vocab])?;
        }
        if n == 0 || vocab == 0 {
            return Err(shape_err(OP, "logits must not be empty"));
        }
        let vocab_u = dim_u32(OP, vocab)?;
        let count = self.uninit(&[1]);
        let row_loss = self.uninit(&[n]);
        ce_count_kernel::launch(
            &self.client,
            CubeCount::Static(1, 1, 1),
            CubeDim::new_1d(ROW_CUBE),
            targets.arg(),
            mask.arg(),
            count.arg(),
            vocab_u,
            ROW_CUBE as usize,
        );
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
            mask.arg(),
            count.arg(),
            row_loss.arg(),
            dl_arg,
            vocab_u,
            ROW_CUBE as usize,
            dlogits.is_some(),
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

    /// Cross-entropy forward and backward into new tensors: `(loss [1], dlogits [n, vocab])`.
    pub fn cross_entropy(
        &self,
        logits: &GpuTensor,
        targets: &GpuIndices,
        mask: &GpuIndices,
    ) -> Result<(GpuTensor, GpuTensor)> {
        let loss = self.uninit(&[1]);
        let dl = self.uninit(&logits.shape);
        self.cross_entropy_into(logits, targets, mask, &loss, Some(&dl))?;
        Ok((loss, dl))
    }

    /// Host convenience: `(loss, dlogits)` computed into NaN-filled outputs. Unlike the device
    /// path it refuses an unmasked row whose target is out of range, as that is a caller bug.
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
        let ld = self.upload(logits, &[n, vocab])?;
        let (td, md) = (self.upload_indices(targets), self.upload_indices(mask));
        let loss = self.full(&[1], f32::NAN);
        let dl = self.full(&[n, vocab], f32::NAN);
        self.cross_entropy_into(&ld, &td, &md, &loss, Some(&dl))?;
        Ok((self.download(&loss)?[0], self.download(&dl)?))
    }
}
