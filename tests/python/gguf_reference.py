"""An independent Llama or Qwen2 forward pass on a GGUF file, for checking rtlab's GGUF loader.

Reads the file with the `gguf` package (llama.cpp's own reader) and dequantizes with it, then runs the
model in numpy (float64) the way GGML does. Llama: on the file's Q/K rows as llama.cpp's converter
permuted them, rotating *adjacent* pairs (rtlab undoes that permutation and rotates halves, so
agreement checks both the reading and the permutation). Qwen2: NeoX RoPE (the two halves of each
head), with the Q/K/V biases.

    python3 gguf_reference.py MODEL.gguf ID,ID,...   prints {"logits": [...]} for the last position
"""

import json
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def main(path, ids):
    r = GGUFReader(path)

    def meta(key):
        f = r.fields[key]
        return f.parts[f.data[0]][0]

    arch = bytes(r.fields["general.architecture"].parts[r.fields["general.architecture"].data[0]]).decode()
    assert arch in ("llama", "qwen2"), arch
    layers = int(meta(f"{arch}.block_count"))
    heads = int(meta(f"{arch}.attention.head_count"))
    kv_heads = int(meta(f"{arch}.attention.head_count_kv"))
    base = float(meta(f"{arch}.rope.freq_base"))
    eps = float(meta(f"{arch}.attention.layer_norm_rms_epsilon"))
    w = {t.name: np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float64) for t in r.tensors}

    emb = w["token_embd.weight"]
    hidden = emb.shape[1]
    hd = hidden // heads
    n = len(ids)
    x = emb[ids]

    def rmsnorm(v, g):
        return v / np.sqrt(np.mean(v * v, axis=-1, keepdims=True) + eps) * g

    # GGML's "normal" RoPE: dimensions (2i, 2i+1) of each head rotate by pos * base^(-2i/hd).
    inv = base ** (-np.arange(0, hd, 2) / hd)
    ang = np.arange(n)[:, None] * inv[None, :]
    cos, sin = np.cos(ang), np.sin(ang)

    def rope(t):  # t: [n, h, hd]
        out = np.empty_like(t)
        if arch == "llama":  # adjacent pairs
            a, b = t[..., 0::2], t[..., 1::2]
            out[..., 0::2] = a * cos[:, None, :] - b * sin[:, None, :]
            out[..., 1::2] = a * sin[:, None, :] + b * cos[:, None, :]
        else:  # NeoX: the two halves
            a, b = t[..., : hd // 2], t[..., hd // 2 :]
            out[..., : hd // 2] = a * cos[:, None, :] - b * sin[:, None, :]
            out[..., hd // 2 :] = a * sin[:, None, :] + b * cos[:, None, :]
        return out

    def proj(h, name):
        y = h @ w[name + ".weight"].T
        return y + w[name + ".bias"] if name + ".bias" in w else y

    mask = np.triu(np.full((n, n), -np.inf), 1)
    for l in range(layers):
        p = f"blk.{l}."
        h = rmsnorm(x, w[p + "attn_norm.weight"])
        q = rope(proj(h, p + "attn_q").reshape(n, heads, hd))
        k = rope(proj(h, p + "attn_k").reshape(n, kv_heads, hd))
        v = proj(h, p + "attn_v").reshape(n, kv_heads, hd)
        out = np.empty((n, heads, hd))
        for i in range(heads):
            j = i // (heads // kv_heads)
            s = q[:, i, :] @ k[:, j, :].T / np.sqrt(hd) + mask
            s = np.exp(s - s.max(axis=-1, keepdims=True))
            s /= s.sum(axis=-1, keepdims=True)
            out[:, i, :] = s @ v[:, j, :]
        x = x + out.reshape(n, hidden) @ w[p + "attn_output.weight"].T
        h = rmsnorm(x, w[p + "ffn_norm.weight"])
        g = h @ w[p + "ffn_gate.weight"].T
        u = h @ w[p + "ffn_up.weight"].T
        x = x + (g / (1 + np.exp(-g)) * u) @ w[p + "ffn_down.weight"].T
    x = rmsnorm(x, w["output_norm.weight"])
    head = w.get("output.weight", emb)
    logits = x[-1] @ head.T
    print(json.dumps({"logits": logits.tolist()}))


if __name__ == "__main__":
    main(sys.argv[1], [int(i) for i in sys.argv[2].split(",")])
