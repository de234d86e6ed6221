"""Makes a GGUF with a SentencePiece BPE vocabulary (`tokenizer.ggml.model = "llama"`) and prints
SentencePiece's own encoding of some texts, to check rtlab's SentencePiece tokenizer against the
library that defines it.

The vocabulary is trained here by the `sentencepiece` package, with Llama's settings (BPE, byte
fallback, digits split, identity normalization, whitespace kept as it is); it is written as llama.cpp's
converter writes a Llama vocabulary (pieces, scores, token types), beside a tiny random Llama body so
that the file loads as a model.

    python3 spm_gguf.py TRAIN.txt TEXTS.json OUT.gguf    prints a JSON array of id arrays
"""

import io
import json
import sys

import numpy as np
import sentencepiece as spm
from gguf import GGUFWriter


def main(train_path, texts_path, out):
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        input=train_path,
        model_writer=model,
        vocab_size=600,
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        allow_whitespace_only_pieces=True,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    n = sp.get_piece_size()
    pieces = [sp.id_to_piece(i) for i in range(n)]
    scores = [sp.get_score(i) for i in range(n)]

    def kind(i):  # llama.cpp's token types
        if sp.is_unknown(i):
            return 2
        if sp.is_control(i):
            return 3
        if sp.is_byte(i):
            return 6
        return 1

    hidden, heads, inter = 64, 4, 128
    rng = np.random.default_rng(0)
    g = GGUFWriter(out, "llama")
    g.add_block_count(1)
    g.add_context_length(256)
    g.add_embedding_length(hidden)
    g.add_feed_forward_length(inter)
    g.add_head_count(heads)
    g.add_head_count_kv(heads)
    g.add_rope_freq_base(10000.0)
    g.add_layer_norm_rms_eps(1e-6)
    g.add_tokenizer_model("llama")
    g.add_token_list(pieces)
    g.add_token_scores(scores)
    g.add_token_types([kind(i) for i in range(n)])
    g.add_bos_token_id(1)
    g.add_eos_token_id(2)
    g.add_unk_token_id(0)

    def t(name, *shape):
        g.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    t("token_embd.weight", n, hidden)
    g.add_tensor("output_norm.weight", np.ones(hidden, dtype=np.float32))
    g.add_tensor("blk.0.attn_norm.weight", np.ones(hidden, dtype=np.float32))
    g.add_tensor("blk.0.ffn_norm.weight", np.ones(hidden, dtype=np.float32))
    for name in ["attn_q", "attn_k", "attn_v", "attn_output"]:
        t(f"blk.0.{name}.weight", hidden, hidden)
    t("blk.0.ffn_gate.weight", inter, hidden)
    t("blk.0.ffn_up.weight", inter, hidden)
    t("blk.0.ffn_down.weight", hidden, inter)
    g.write_header_to_file()
    g.write_kv_data_to_file()
    g.write_tensors_to_file()
    g.close()
    texts = json.load(open(texts_path))
    print(json.dumps([sp.encode(text) for text in texts]))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
