"""Writes a GGUF file from a small Hugging Face model directory (safetensors, f32), as llama.cpp's
converter would, with llama.cpp's own `gguf` package: for rtlab's tests of architectures that no small
real GGUF exists for offline (Qwen2). Llama's Q/K rows are permuted as the converter permutes them; a
Qwen2 file is not. Projections are stored as Q8_0, everything else as F32.

    python3 hf_to_gguf.py MODEL_DIR OUT.gguf
"""

import json
import sys

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize


def load_safetensors(path):
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", (name, info["dtype"])
        start, end = info["data_offsets"]
        out[name] = np.frombuffer(data[start:end], dtype=np.float32).reshape(info["shape"])
    return out


def permute(w, heads):  # llama.cpp's convert_hf_to_gguf.py LlamaModel.permute
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def main(model_dir, out):
    cfg = json.load(open(f"{model_dir}/config.json"))
    arch = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}[cfg["architectures"][0]]
    w = load_safetensors(f"{model_dir}/model.safetensors")
    tok = json.load(open(f"{model_dir}/tokenizer.json"))
    vocab = tok["model"]["vocab"]
    for added in tok.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    specials = {a["content"] for a in tok.get("added_tokens", [])}

    g = GGUFWriter(out, arch)
    g.add_block_count(cfg["num_hidden_layers"])
    g.add_context_length(cfg["max_position_embeddings"])
    g.add_embedding_length(cfg["hidden_size"])
    g.add_feed_forward_length(cfg["intermediate_size"])
    g.add_head_count(cfg["num_attention_heads"])
    g.add_head_count_kv(cfg["num_key_value_heads"])
    g.add_rope_freq_base(float(cfg.get("rope_theta", 10000.0)))
    g.add_layer_norm_rms_eps(float(cfg["rms_norm_eps"]))
    g.add_tokenizer_model("gpt2")
    g.add_tokenizer_pre("default")
    g.add_token_list(tokens)
    g.add_token_types([3 if t in specials else 1 for t in tokens])
    g.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in tok["model"].get("merges", [])])
    g.add_eos_token_id(vocab["<|endoftext|>"])

    names = {
        "input_layernorm.weight": "attn_norm.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight",
        "self_attn.k_proj.weight": "attn_k.weight",
        "self_attn.v_proj.weight": "attn_v.weight",
        "self_attn.q_proj.bias": "attn_q.bias",
        "self_attn.k_proj.bias": "attn_k.bias",
        "self_attn.v_proj.bias": "attn_v.bias",
        "self_attn.o_proj.weight": "attn_output.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    }
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    for name, t in sorted(w.items()):
        if name == "model.embed_tokens.weight":
            gname = "token_embd.weight"
        elif name == "model.norm.weight":
            gname = "output_norm.weight"
        elif name == "lm_head.weight":
            if cfg.get("tie_word_embeddings"):
                continue
            gname = "output.weight"
        else:
            layer, part = name.removeprefix("model.layers.").split(".", 1)
            gname = f"blk.{layer}.{names[part]}"
        if arch == "llama" and gname.endswith("attn_q.weight"):
            t = permute(t, heads)
        elif arch == "llama" and gname.endswith("attn_k.weight"):
            t = permute(t, kv_heads)
        t = np.ascontiguousarray(t, dtype=np.float32)
        if name.endswith("_proj.weight"):
            q = quantize(t, GGMLQuantizationType.Q8_0)
            g.add_tensor(gname, q, raw_shape=q.shape, raw_dtype=GGMLQuantizationType.Q8_0)
        else:
            g.add_tensor(gname, t)
    g.write_header_to_file()
    g.write_kv_data_to_file()
    g.write_tensors_to_file()
    g.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
