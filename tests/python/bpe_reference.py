"""An independent byte-level BPE encoder for a GGUF file's GPT-2-style vocabulary, to check rtlab's
tokenizer (built with the `tokenizers` crate) on ASCII text.

The vocabulary and merges are read with the `gguf` package; the pre-tokenizer is llama.cpp's for
`tokenizer.ggml.pre` = smollm (and starcoder, refact): every digit on its own, then GPT-2's split,
written here for ASCII (\\p{L} is [A-Za-z], \\p{N} is [0-9]). The merge loop is GPT-2's: merge the
adjacent pair of lowest rank until none is left.

    python3 bpe_reference.py MODEL.gguf TEXTS.json    prints a JSON array of id arrays
"""

import json
import re
import sys

from gguf import GGUFReader

GPT2_SPLIT = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+""")


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def field_strings(r, key):
    f = r.fields[key]
    return [bytes(f.parts[i]).decode("utf-8") for i in f.data]


def main(path, texts_path):
    r = GGUFReader(path)
    pre = bytes(r.fields["tokenizer.ggml.pre"].parts[r.fields["tokenizer.ggml.pre"].data[0]]).decode()
    assert pre in ("smollm", "starcoder", "refact"), pre
    tokens = field_strings(r, "tokenizer.ggml.tokens")
    vocab = {t: i for i, t in enumerate(tokens)}
    ranks = {tuple(m.split(" ", 1)): i for i, m in enumerate(field_strings(r, "tokenizer.ggml.merges"))}
    byte_char = bytes_to_unicode()

    def bpe(word):
        parts = list(word)
        while len(parts) > 1:
            pairs = [(ranks.get((a, b), 1 << 60), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            rank, i = min(pairs)
            if rank == 1 << 60:
                break
            parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2 :]
        return [vocab[p] for p in parts]

    out = []
    for text in json.load(open(texts_path)):
        assert text.isascii()
        ids = []
        for piece in re.split(r"([0-9])", text):
            for word in GPT2_SPLIT.findall(piece):
                ids.extend(bpe("".join(byte_char[b] for b in word.encode("utf-8"))))
        out.append(ids)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
