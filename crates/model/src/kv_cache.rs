//! The KV cache of generation: per layer, the keys (transposed) and values of the tokens seen so
//! far, in buffers that grow by chunks, with the batch operations decoding needs (a prompt's cache
//! shared by its samples, finished samples dropped, several prompts' caches stacked) and decoding's
//! one-token attention read in place ([`crate::decode_attention`]).
//!
//! Invariant: a prompt prefilled once and sampled n times is kept once. Each sample's row holds
//! only its own positions and reads the prompt's from the one shared copy (on the CPU in f32, where
//! decoding's attention reads the two in order; elsewhere the prompt is copied to each row as
//! before). A step then reads the prompt's keys and values from memory once, not n times, and the
//! attention's arithmetic is the same as over one copy per row (tests).

use crate::custom_op::f32_view;
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
    /// Prompts whose positions come before the rows' own, kept once however many rows read them;
    /// None where each row holds all its positions. When set, `starts` is empty.
    prompts: Option<SharedPrompts>,
}

/// Row `r` reads `parts[of_row[r]]`'s positions, then its own.
#[derive(Clone)]
struct SharedPrompts {
    parts: Vec<Prompt>,
    of_row: Vec<usize>,
}

/// One prompt's cached positions, contiguous f32 on the CPU: keys transposed [kv_heads, head_dim,
/// len] and values [kv_heads, len, head_dim].
#[derive(Clone)]
struct Prompt {
    keys_t: Tensor,
    values: Tensor,
    len: usize,
}

impl LayerKv {
    fn empty(like: &Tensor) -> candle_core::Result<LayerKv> {
        let (b, h, _, d) = like.dims4()?;
        Ok(LayerKv {
            keys_t: Tensor::zeros((b, h, d, 0), like.dtype(), like.device())?,
            values: Tensor::zeros((b, h, 0, d), like.dtype(), like.device())?,
            len: 0,
            starts: Vec::new(),
            prompts: None,
        })
    }

    /// Rows of the batch.
    fn rows(&self) -> usize {
        self.values.dims()[0]
    }

    /// Positions row `r` has cached: its shared prompt's, then its own.
    fn row_len(&self, r: usize) -> usize {
        match &self.prompts {
            Some(p) => p.parts[p.of_row[r]].len + self.len,
            None => self.len - self.starts.get(r).copied().unwrap_or(0),
        }
    }

    /// Positions the longest row has cached.
    fn longest(&self) -> usize {
        match &self.prompts {
            Some(_) => (0..self.rows())
                .map(|r| self.row_len(r))
                .max()
                .unwrap_or(self.len),
            None => self.len,
        }
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
    /// kv_heads, len, head_dim]), for the general attention: views of the buffers, once shared
    /// prompts are copied into every row that reads them (see [`Self::materialized`]).
    pub(crate) fn views(&mut self) -> candle_core::Result<(Tensor, Tensor)> {
        if self.prompts.is_some() {
            *self = self.materialized()?;
        }
        self.own_views()
    }

    /// The rows' own positions: views of the buffers.
    fn own_views(&self) -> candle_core::Result<(Tensor, Tensor)> {
        Ok((
            self.keys_t.narrow(3, 0, self.len)?,
            self.values.narrow(2, 0, self.len)?,
        ))
    }

    /// The same cache with every row holding all its positions (its shared prompt's copied in
    /// front of its own), right-aligned as [`Self::stack`] aligns rows of different lengths. Only
    /// the general attention needs it (a pass of several tokens after sampling began).
    fn materialized(&self) -> candle_core::Result<LayerKv> {
        let Some(prompts) = &self.prompts else {
            let (k_t, v) = self.own_views()?;
            let mut out = LayerKv::empty(&v)?;
            out.append_transposed(&k_t, &v)?;
            out.starts = self.starts.clone();
            return Ok(out);
        };
        let (own_k, own_v) = self.own_views()?;
        let rows = (0..self.rows())
            .map(|r| {
                let prompt = &prompts.parts[prompts.of_row[r]];
                let k_t = Tensor::cat(&[&prompt.keys_t.unsqueeze(0)?, &own_k.narrow(0, r, 1)?], 3)?;
                let v = Tensor::cat(&[&prompt.values.unsqueeze(0)?, &own_v.narrow(0, r, 1)?], 2)?;
                let mut row = LayerKv::empty(&v)?;
                row.append_transposed(&k_t, &v)?;
                Ok(row)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        LayerKv::stack(&rows.iter().collect::<Vec<_>>())
    }

    /// The attention of one new token per sequence (`q` [batch, heads, 1, head_dim], its key and
    /// value already appended) over the cache, read in place ([`crate::decode_attention`]): [batch,
    /// heads, head_dim]. None off the CPU or outside f32, where the general path runs.
    pub(crate) fn attend_one_token(
        &self,
        q: &Tensor,
        heads: usize,
    ) -> candle_core::Result<Option<Tensor>> {
        use crate::decode_attention::{Run, Runs};
        let (batch, kv_heads, head_dim, capacity) = self.keys_t.dims4()?;
        if !q.device().is_cpu()
            || q.dtype() != DType::F32
            || q.dims4()? != (batch, heads, 1, head_dim)
        {
            return Ok(None);
        }
        let q = q.contiguous()?;
        let (Some(q_all), Some(k_all), Some(v_all)) =
            (f32_view(&q), f32_view(&self.keys_t), f32_view(&self.values))
        else {
            return Ok(None);
        };
        let parts = match &self.prompts {
            Some(p) => p.parts.as_slice(),
            None => &[],
        };
        let prompts: Vec<_> = parts
            .iter()
            .map(|p| (f32_view(&p.keys_t), f32_view(&p.values), p.len))
            .collect();
        let mut prompt_runs = Vec::with_capacity(prompts.len());
        for (k, v, len) in &prompts {
            let (Some(k), Some(v)) = (k, v) else {
                return Ok(None);
            };
            prompt_runs.push((k.get(), v.get(), *len));
        }
        let (q_all, k_all, v_all) = (q_all.get(), k_all.get(), v_all.get());
        let d = head_dim;
        let runs = |b: usize, kv: usize| -> Runs<'_> {
            let item = b * kv_heads + kv;
            let start = self.starts.get(b).copied().unwrap_or(0);
            // The row's own positions: its keys from `start` in each dimension's row, its values
            // from row `start`.
            let own = Run {
                keys_t: &k_all[item * d * capacity + start..(item + 1) * d * capacity],
                values: &v_all[(item * capacity + start) * d..(item + 1) * capacity * d],
                capacity,
                len: self.len - start,
            };
            match &self.prompts {
                Some(p) => {
                    let (keys_t, values, len) = prompt_runs[p.of_row[b]];
                    let prompt = Run {
                        keys_t: &keys_t[kv * d * len..(kv + 1) * d * len],
                        values: &values[kv * len * d..(kv + 1) * len * d],
                        capacity: len,
                        len,
                    };
                    ([prompt, own], 2)
                }
                None => ([own, own], 1),
            }
        };
        let shape = crate::decode_attention::Shape {
            batch,
            heads,
            kv_heads,
            head_dim,
        };
        let y = crate::decode_attention::attend(q_all, shape, runs);
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
            // The prompts the kept rows read, renumbered; a prompt no row reads any more is freed.
            prompts: self.prompts.as_ref().map(|p| {
                let mut parts = Vec::new();
                let mut renumbered = vec![None; p.parts.len()];
                let of_row = keep
                    .iter()
                    .map(|&r| {
                        let old = p.of_row[r];
                        *renumbered[old].get_or_insert_with(|| {
                            parts.push(p.parts[old].clone());
                            parts.len() - 1
                        })
                    })
                    .collect();
                SharedPrompts { parts, of_row }
            }),
        })
    }

    /// The same cache for `n` copies of each sequence. One sequence on the CPU in f32 (a prompt
    /// prefilled for its samples) is kept once and shared by the n rows, which start with no
    /// positions of their own.
    fn repeat(&self, n: usize) -> candle_core::Result<LayerKv> {
        let (k_t, v) = self.own_views()?;
        let (rows, kv_heads, head_dim, _) = k_t.dims4()?;
        if rows == 1
            && self.starts.is_empty()
            && self.prompts.is_none()
            && v.device().is_cpu()
            && v.dtype() == DType::F32
        {
            let prompt = Prompt {
                keys_t: k_t.squeeze(0)?.contiguous()?,
                values: v.squeeze(0)?.contiguous()?,
                len: self.len,
            };
            return Ok(LayerKv {
                keys_t: Tensor::zeros((n, kv_heads, head_dim, 0), v.dtype(), v.device())?,
                values: Tensor::zeros((n, kv_heads, 0, head_dim), v.dtype(), v.device())?,
                len: 0,
                starts: Vec::new(),
                prompts: Some(SharedPrompts {
                    parts: vec![prompt],
                    of_row: vec![0; n],
                }),
            });
        }
        if self.prompts.is_some() {
            return self.materialized()?.repeat(n);
        }
        let (k_t, v) = (k_t.repeat((n, 1, 1, 1))?, v.repeat((n, 1, 1, 1))?);
        let mut out = LayerKv::empty(&v)?;
        out.append_transposed(&k_t, &v)?;
        // `repeat` tiles the batch: sequences 0..b, then 0..b again.
        let b = self.starts.len();
        out.starts = self.starts.iter().copied().cycle().take(n * b).collect();
        Ok(out)
    }

    /// The layers of several caches as one batch. Caches whose rows read shared prompts and hold
    /// as many positions of their own (each prompt's samples, before their first step) keep their
    /// prompts shared; otherwise every row holds all its positions, right-aligned: each cache's
    /// sequences after padding up to the longest (zeros that no sequence attends to).
    fn stack(parts: &[&LayerKv]) -> candle_core::Result<LayerKv> {
        if let Some(shared) = LayerKv::stack_shared(parts)? {
            return Ok(shared);
        }
        if parts.iter().any(|p| p.prompts.is_some()) {
            let whole = parts
                .iter()
                .map(|p| p.materialized())
                .collect::<candle_core::Result<Vec<_>>>()?;
            return LayerKv::stack(&whole.iter().collect::<Vec<_>>());
        }
        let longest = parts.iter().map(|p| p.len).max().unwrap_or(0);
        let (mut keys, mut values, mut starts) = (Vec::new(), Vec::new(), Vec::new());
        for part in parts {
            let (k_t, v) = part.own_views()?;
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

    /// [`LayerKv::stack`] of caches that all read shared prompts, hold no positions of their own yet
    /// (each prompt's samples before their first step, as `generate_batches` stacks them) and agree
    /// on their heads' shapes: their rows in order, every prompt still kept once. None otherwise.
    fn stack_shared(parts: &[&LayerKv]) -> candle_core::Result<Option<LayerKv>> {
        let Some(first) = parts.first() else {
            return Ok(None);
        };
        let (_, kv_heads, head_dim, _) = first.keys_t.dims4()?;
        for p in parts {
            let (_, h, d, _) = p.keys_t.dims4()?;
            if p.prompts.is_none() || p.len != 0 || (h, d) != (kv_heads, head_dim) {
                return Ok(None);
            }
        }
        let (mut prompt_parts, mut of_row) = (Vec::new(), Vec::new());
        for p in parts {
            let Some(shared) = &p.prompts else {
                return Ok(None);
            };
            let offset = prompt_parts.len();
            prompt_parts.extend(shared.parts.iter().cloned());
            of_row.extend(shared.of_row.iter().map(|i| i + offset));
        }
        let rows = of_row.len();
        let (dtype, device) = (first.values.dtype(), first.values.device());
        Ok(Some(LayerKv {
            keys_t: Tensor::zeros((rows, kv_heads, head_dim, 0), dtype, device)?,
            values: Tensor::zeros((rows, kv_heads, 0, head_dim), dtype, device)?,
            len: 0,
            starts: Vec::new(),
            prompts: Some(SharedPrompts {
                parts: prompt_parts,
                of_row,
            }),
        }))
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
        let positions: Vec<usize> = (0..kv.rows()).map(|r| kv.row_len(r)).collect();
        let varies = match &kv.prompts {
            Some(_) => positions.iter().any(|&p| p != kv.longest()),
            None => !kv.starts.is_empty(),
        };
        varies.then_some(positions)
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
            .map(|kv| kv.longest())
            .unwrap_or(0)
    }
}
