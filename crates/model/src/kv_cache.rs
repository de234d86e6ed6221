//! The KV cache of generation: per layer, the keys (transposed) and values of the tokens seen so
//! far, in buffers that grow by chunks, with the batch operations decoding needs (a prompt's cache
//! copied to its samples, finished samples dropped, several prompts' caches stacked right-aligned)
//! and decoding's one-token attention read in place ([`crate::decode_attention`]).

use candle_core::{DType, Tensor};

/// Keys and values of the tokens seen so far, per layer, for generation.
#[derive(Default)]
pub struct KvCache {
    pub(crate) layers: Vec<Option<LayerKv>>,
}

/// Positions a layer's key and value buffers grow by: a new token is written in place, and the
/// buffers are copied into bigger ones once every this many tokens (concatenating copied the whole
/// cache on every token).
const KV_CHUNK: usize = 128;

/// One layer's cached keys and values, in buffers whose first `len` positions hold the tokens seen
/// so far. The keys are kept transposed, [batch, kv_heads, head_dim, capacity], the layout the
/// attention product reads: repeating them for the query heads is then a copy of contiguous runs,
/// where transposing them on every token copied element by element.
pub struct LayerKv {
    keys_t: Tensor,
    /// [batch, kv_heads, capacity, head_dim].
    values: Tensor,
    len: usize,
    /// Per sequence, its first position, where sequences of different lengths share the buffers
    /// right-aligned (each after its own padding; see [`KvCache::stack`]); empty when every
    /// sequence starts at 0.
    pub(crate) starts: Vec<usize>,
}

impl LayerKv {
    fn empty(like: &Tensor) -> candle_core::Result<LayerKv> {
        let (b, h, _, d) = like.dims4()?;
        Ok(LayerKv {
            keys_t: Tensor::zeros((b, h, d, 0), like.dtype(), like.device())?,
            values: Tensor::zeros((b, h, 0, d), like.dtype(), like.device())?,
            len: 0,
            starts: Vec::new(),
        })
    }

    /// A cache holding `k` and `v` [batch, kv_heads, seq, head_dim].
    pub(crate) fn new(k: &Tensor, v: &Tensor) -> candle_core::Result<LayerKv> {
        let mut kv = LayerKv::empty(v)?;
        kv.append(k, v)?;
        Ok(kv)
    }

    /// Writes the keys and values [batch, kv_heads, t, head_dim] of new tokens after the cached ones.
    pub(crate) fn append(&mut self, k: &Tensor, v: &Tensor) -> candle_core::Result<()> {
        self.append_transposed(&k.t()?, v)
    }

    /// `append` with the keys already transposed, [batch, kv_heads, head_dim, t]. The buffers grow
    /// by whole chunks when full.
    fn append_transposed(&mut self, k_t: &Tensor, v: &Tensor) -> candle_core::Result<()> {
        let t = v.dim(2)?;
        if self.len + t > self.values.dim(2)? {
            let capacity = (self.len + t).div_ceil(KV_CHUNK) * KV_CHUNK;
            let grow = |buf: &Tensor, dim: usize| -> candle_core::Result<Tensor> {
                let mut dims = buf.dims().to_vec();
                dims[dim] = capacity;
                let bigger = Tensor::zeros(dims, buf.dtype(), buf.device())?;
                bigger.slice_set(&buf.narrow(dim, 0, self.len)?.contiguous()?, dim, 0)?;
                Ok(bigger)
            };
            self.keys_t = grow(&self.keys_t, 3)?;
            self.values = grow(&self.values, 2)?;
        }
        self.keys_t.slice_set(&k_t.contiguous()?, 3, self.len)?;
        self.values.slice_set(&v.contiguous()?, 2, self.len)?;
        self.len += t;
        Ok(())
    }

    /// The cached keys, transposed ([batch, kv_heads, head_dim, len]), and values ([batch,
    /// kv_heads, len, head_dim]): views of the buffers.
    pub(crate) fn views(&self) -> candle_core::Result<(Tensor, Tensor)> {
        Ok((
            self.keys_t.narrow(3, 0, self.len)?,
            self.values.narrow(2, 0, self.len)?,
        ))
    }

    /// The attention of one new token per sequence (`q` [batch, heads, 1, head_dim], its key and
    /// value already appended) over the cache, read in place ([`crate::decode_attention`]): [batch,
    /// heads, head_dim]. None off the CPU or outside f32, where the general path runs.
    pub(crate) fn attend_one_token(
        &self,
        q: &Tensor,
        heads: usize,
    ) -> candle_core::Result<Option<Tensor>> {
        use candle_core::{CpuStorage, Storage};
        let (batch, kv_heads, head_dim, capacity) = self.keys_t.dims4()?;
        if !q.device().is_cpu()
            || q.dtype() != DType::F32
            || q.dims4()? != (batch, heads, 1, head_dim)
        {
            return Ok(None);
        }
        let q = q.contiguous()?;
        let (q_store, q_layout) = q.storage_and_layout();
        let (k_store, k_layout) = self.keys_t.storage_and_layout();
        let (v_store, v_layout) = self.values.storage_and_layout();
        let (
            Storage::Cpu(CpuStorage::F32(q_all)),
            Storage::Cpu(CpuStorage::F32(k_all)),
            Storage::Cpu(CpuStorage::F32(v_all)),
        ) = (&*q_store, &*k_store, &*v_store)
        else {
            return Ok(None);
        };
        let (Some((q0, q1)), Some((k0, k1)), Some((v0, v1))) = (
            q_layout.contiguous_offsets(),
            k_layout.contiguous_offsets(),
            v_layout.contiguous_offsets(),
        ) else {
            return Ok(None);
        };
        let shape = crate::decode_attention::Shape {
            batch,
            heads,
            kv_heads,
            head_dim,
            capacity,
            len: self.len,
        };
        let y = crate::decode_attention::attend(
            &q_all[q0..q1],
            &k_all[k0..k1],
            &v_all[v0..v1],
            shape,
            &self.starts,
        );
        Ok(Some(Tensor::from_vec(
            y,
            (batch, heads, head_dim),
            q.device(),
        )?))
    }

    /// The cache of the batch rows `keep`, with the same capacity.
    fn select_rows(&self, keep: &[usize]) -> candle_core::Result<LayerKv> {
        let ids: Vec<u32> = keep.iter().map(|&r| r as u32).collect();
        let ids = Tensor::new(ids.as_slice(), self.values.device())?;
        Ok(LayerKv {
            keys_t: self.keys_t.index_select(&ids, 0)?,
            values: self.values.index_select(&ids, 0)?,
            len: self.len,
            starts: match self.starts.is_empty() {
                true => Vec::new(),
                false => keep.iter().map(|&r| self.starts[r]).collect(),
            },
        })
    }

    /// The same cache for `n` copies of each sequence.
    fn repeat(&self, n: usize) -> candle_core::Result<LayerKv> {
        let (k_t, v) = self.views()?;
        let (k_t, v) = (k_t.repeat((n, 1, 1, 1))?, v.repeat((n, 1, 1, 1))?);
        let mut out = LayerKv::empty(&v)?;
        out.append_transposed(&k_t, &v)?;
        // `repeat` tiles the batch: sequences 0..b, then 0..b again.
        let b = self.starts.len();
        out.starts = self.starts.iter().copied().cycle().take(n * b).collect();
        Ok(out)
    }

    /// The layers of several caches as one batch, right-aligned: each cache's sequences after
    /// padding up to the longest (zeros that no sequence attends to).
    fn stack(parts: &[&LayerKv]) -> candle_core::Result<LayerKv> {
        let longest = parts.iter().map(|p| p.len).max().unwrap_or(0);
        let (mut keys, mut values, mut starts) = (Vec::new(), Vec::new(), Vec::new());
        for part in parts {
            let (k_t, v) = part.views()?;
            let pad = longest - part.len;
            let (b, h, d, _) = k_t.dims4()?;
            let padded = |x: Tensor, dim: usize, shape: (usize, usize, usize, usize)| match pad {
                0 => Ok(x),
                _ => Tensor::cat(&[&Tensor::zeros(shape, x.dtype(), x.device())?, &x], dim),
            };
            keys.push(padded(k_t, 3, (b, h, d, pad))?);
            values.push(padded(v, 2, (b, h, pad, d))?);
            for row in 0..b {
                starts.push(pad + part.starts.get(row).copied().unwrap_or(0));
            }
        }
        let (k_t, v) = (Tensor::cat(&keys, 0)?, Tensor::cat(&values, 0)?);
        let mut out = LayerKv::empty(&v)?;
        out.append_transposed(&k_t, &v)?;
        if starts.iter().any(|&s| s > 0) {
            out.starts = starts;
        }
        Ok(out)
    }
}

impl KvCache {
    /// The same cache for `n` sequences: the batch dimension repeated (a prompt prefilled once, then
    /// sampled n times).
    pub fn repeat(&self, n: usize) -> candle_core::Result<KvCache> {
        let layers = self
            .layers
            .iter()
            .map(|l| match l {
                Some(kv) => Ok(Some(kv.repeat(n)?)),
                None => Ok(None),
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(KvCache { layers })
    }

    /// The cache of the batch rows `keep` (in that order): finished samples leave a batch.
    pub fn select_rows(&self, keep: &[usize]) -> candle_core::Result<KvCache> {
        let layers = self
            .layers
            .iter()
            .map(|l| match l {
                Some(kv) => Ok(Some(kv.select_rows(keep)?)),
                None => Ok(None),
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(KvCache { layers })
    }

    /// Several caches as one batch: their sequences in order, right-aligned to the longest, each
    /// attending only to its own positions and rotated at its own ([`KvCache::sequence_positions`]).
    /// Every cache must come from the same model.
    pub fn stack(caches: &[KvCache]) -> candle_core::Result<KvCache> {
        let layers = caches.iter().map(|c| c.layers.len()).max().unwrap_or(0);
        let layers = (0..layers)
            .map(|i| {
                let parts: Vec<&LayerKv> = caches
                    .iter()
                    .filter_map(|c| c.layers.get(i).and_then(|l| l.as_ref()))
                    .collect();
                match parts.len() == caches.len() {
                    true => Ok(Some(LayerKv::stack(&parts)?)),
                    false => candle_core::bail!("KvCache::stack: cache {i} of a part is empty"),
                }
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(KvCache { layers })
    }

    /// Where each sequence's next token sits, when the sequences have different lengths (a
    /// [`KvCache::stack`] of them); None when all sit at [`KvCache::len`].
    pub fn sequence_positions(&self) -> Option<Vec<usize>> {
        let kv = self.layers.first()?.as_ref()?;
        (!kv.starts.is_empty()).then(|| kv.starts.iter().map(|s| kv.len - s).collect())
    }

    /// True before the first token is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many positions are cached.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map(|kv| kv.len)
            .unwrap_or(0)
    }
}
