"""An independent Llama forward pass on a GGUF file, for checking rtlab's GGUF loader.

Reads the file with the `gguf` package (llama.cpp's own reader) and dequantizes with it, then runs the
model in numpy (float64) the way GGML does: on the file's Q/K rows as llama.cpp's converter permuted
them, rotating *adjacent* pairs. rtlab undoes that permutation and rotates halves, so agreement checks
both the reading and the permutation.

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
    assert arch == "llama", arch
    layers = int(meta("llama.block_count"))
    heads = int(meta("llama.attention.head_count"))
    kv_heads = int(meta("llama.attention.head_count_kv"))
    base = float(meta("llama.rope.freq_base"))
    eps = float(meta("llama.attention.layer_norm_rms_epsilon"))
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
        a, b = t[..., 0::2], t[..., 1::2]
        out = np.empty_like(t)
        out[..., 0::2] = a * cos[:, None, :] - b * sin[:, None, :]
        out[..., 1::2] = a * sin[:, None, :] + b * cos[:, None, :]
        return out

    mask = np.triu(np.full((n, n), -np.inf), 1)
    for l in range(layers):
        p = f"blk.{l}."
        h = rmsnorm(x, w[p + "attn_norm.weight"])
        q = rope((h @ w[p + "attn_q.weight"].T).reshape(n, heads, hd))
        k = rope((h @ w[p + "attn_k.weight"].T).reshape(n, kv_heads, hd))
        v = (h @ w[p + "attn_v.weight"].T).reshape(n, kv_heads, hd)
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
