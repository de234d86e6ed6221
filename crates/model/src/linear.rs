//! A linear layer of the model: a frozen base weight (dense or quantized) with an optional LoRA
//! adapter, and its forward in each kind of pass (a training step's fused node, decoding's products
//! of one input computed together, the plain product elsewhere).

use super::fused;
use super::layers::{self, BaseWeight};
use super::lora::Lora;
use super::lora_linear::LoraLinear;
use super::low_rank;
use super::pass::{dropout, dropout_mask, Pass};
use super::pool_gemm;
use candle_core::Tensor;

/// A linear layer (`weight` [out, in] as stored by HF), optionally adapted.
pub struct Linear {
    pub(crate) weight: BaseWeight,
    pub(crate) bias: Option<Tensor>,
    pub lora: Option<Lora>,
}

impl Linear {
    pub(crate) fn forward(&self, x: &Tensor, pass: &mut Pass) -> candle_core::Result<Tensor> {
        if let Some(l) = self.lora.as_ref().filter(|_| pass.adapters) {
            // A training step's adapted linear: one graph node (see lora_linear.rs), the same bits.
            let exact_base = matches!(self.weight, BaseWeight::Dense(_)) || pass.training;
            if pass.track_gradients && exact_base && fused::applies(x) {
                let dropout_mask = match pass.dropout_rng.as_mut() {
                    Some(rng) if l.dropout > 0.0 => {
                        Some(dropout_mask(x.elem_count(), l.dropout, rng))
                    }
                    _ => None,
                };
                let op = LoraLinear::new(
                    self.weight.clone(),
                    self.bias.clone(),
                    l.scale,
                    dropout_mask,
                );
                return op.forward(x, l.a.as_tensor(), l.b.as_tensor());
            }
        }
        let (x2, dims) = as_rows(x)?;
        let y = self.weight.matmul_t(&x2, pass.training)?;
        self.finish(y, x2, dims, pass)
    }

    /// Decoding's products of several linears of the same input (a layer's q, k and v; its gate and
    /// up): the base products computed together where the quantized kernel can share `x`'s
    /// quantization and one wake of the pool among them ([`layers::decoding_matmuls_t`]), then each
    /// linear's bias and adapter as in [`Self::forward`]. The same bits as calling `forward` on each,
    /// which every other pass does.
    pub(crate) fn forward_shared<const N: usize>(
        linears: [&Linear; N],
        x: &Tensor,
        pass: &mut Pass,
    ) -> candle_core::Result<[Tensor; N]> {
        let mut out = Vec::with_capacity(N);
        let (x2, dims) = as_rows(x)?;
        let decoding = !pass.training && !pass.track_gradients;
        let grouped = match decoding {
            true => layers::decoding_matmuls_t(&linears.map(|l| &l.weight), &x2)?,
            false => None,
        };
        match grouped {
            Some(ys) => {
                for (l, y) in linears.iter().zip(ys) {
                    out.push(l.finish(y, x2.clone(), dims.clone(), pass)?);
                }
            }
            None => {
                for l in linears {
                    out.push(l.forward(x, pass)?);
                }
            }
        }
        out.try_into()
            .map_err(|_| candle_core::Error::Msg("forward_shared: a product is missing".into()))
    }

    /// The base product `y` [rows, out] of `x2` [rows, in] made a linear's output: its bias and its
    /// adapter added, then shaped as the input `dims` with the last one `out`.
    fn finish(
        &self,
        mut y: Tensor,
        x2: Tensor,
        dims: Vec<usize>,
        pass: &mut Pass,
    ) -> candle_core::Result<Tensor> {
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        if let Some(l) = self.lora.as_ref().filter(|_| pass.adapters) {
            let xd = match pass.dropout_rng.as_mut() {
                Some(rng) if l.dropout > 0.0 => dropout(&x2, l.dropout, rng)?,
                _ => x2,
            };
            let (a, b) = if pass.track_gradients {
                (l.a.as_tensor().clone(), l.b.as_tensor().clone())
            } else {
                (l.a.as_tensor().detach(), l.b.as_tensor().detach())
            };
            let low = if pass.rows_alone {
                // Each row's bits whatever the batch (decoding's promise; see low_rank.rs).
                low_rank::product(&xd, &a, &b, &l.decode_b_t)?
            } else {
                // On candle's pool, the bits of `xd.matmul(&a.t()?)?.matmul(&b.t()?)`.
                pool_gemm::matmul_t(&pool_gemm::matmul_t(&xd, &a)?, &b)?
            };
            y = (y + (low * l.scale)?)?;
        }
        let mut out = dims;
        let last = out.len() - 1;
        out[last] = y.dim(1)?;
        y.reshape(out)
    }

    /// `W + s·B·A`, the weight a merged model stores.
    pub fn merged_weight(&self) -> candle_core::Result<Tensor> {
        let weight = self.weight.dense()?;
        match &self.lora {
            None => Ok(weight),
            Some(l) => weight.add(
                &(l.b.as_tensor().matmul(l.a.as_tensor())? * l.scale)?.to_dtype(weight.dtype())?,
            ),
        }
    }
}

/// `x` [.., in] as rows [rows, in], with its dims (a view: the reshape copies nothing when `x` is
/// contiguous).
fn as_rows(x: &Tensor) -> candle_core::Result<(Tensor, Vec<usize>)> {
    let dims = x.dims().to_vec();
    let d_in = *dims.last().unwrap_or(&0);
    let rows: usize = dims[..dims.len() - 1].iter().product();
    Ok((x.reshape((rows, d_in))?, dims))
}
