//! What every custom op of this crate writes around candle's `CustomOp1/2/3`: its inputs as the
//! slices of contiguous CPU tensors, its output as CPU storage with a shape, and the gradients of two
//! inputs computed in one pass and split. The ops (`fused`, `pool_gemm`, `lora_linear`,
//! `output_head`, `layers`) hold only their arithmetic.

use candle_core::{CpuStorage, Layout, Shape, Tensor};

/// The values of a contiguous f32 CPU tensor, as a custom op receives it.
pub(crate) fn values<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((start, end))) => Ok(&v[start..end]),
        _ => candle_core::bail!("{op}: expects a contiguous f32 tensor on the CPU"),
    }
}

/// The f32 values of a contiguous CPU tensor, held for reading; None for any other tensor.
pub(crate) fn f32_view(t: &Tensor) -> Option<F32View<'_>> {
    use candle_core::{CpuStorage, Storage};
    let (storage, layout) = t.storage_and_layout();
    let (start, end) = layout.contiguous_offsets()?;
    match &*storage {
        Storage::Cpu(CpuStorage::F32(_)) => Some(F32View {
            storage,
            range: start..end,
        }),
        _ => None,
    }
}

/// A tensor's f32 values on the CPU, its storage's read lock held while they are read.
pub(crate) struct F32View<'a> {
    storage: candle_core::StorageRef<'a>,
    range: std::ops::Range<usize>,
}

impl F32View<'_> {
    pub(crate) fn get(&self) -> &[f32] {
        match &*self.storage {
            candle_core::Storage::Cpu(candle_core::CpuStorage::F32(all)) => {
                &all[self.range.clone()]
            }
            _ => unreachable!("checked by f32_view"),
        }
    }
}

/// The ids of a contiguous u32 CPU tensor (a batch's targets), as a custom op receives it.
pub(crate) fn ids<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> candle_core::Result<&'a [u32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::U32(t), Some((start, end))) => Ok(&t[start..end]),
        _ => candle_core::bail!("{op}: expects a contiguous u32 tensor on the CPU"),
    }
}

/// A custom op's f32 result: its values and their shape.
pub(crate) fn to_storage(values: Vec<f32>, shape: impl Into<Shape>) -> (CpuStorage, Shape) {
    (CpuStorage::F32(values), shape.into())
}

/// The gradients of `a` and `b` from a backward op that computes both in one pass and returns them
/// as one flat tensor, `a`'s values then `b`'s.
pub(crate) fn split_gradients(
    both: &Tensor,
    a: &Tensor,
    b: &Tensor,
) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
    let (na, nb) = (a.elem_count(), b.elem_count());
    let da = both.narrow(0, 0, na)?.reshape(a.shape())?;
    let db = both.narrow(0, na, nb)?.reshape(b.shape())?;
    Ok((Some(da), Some(db)))
}
