"""llama.cpp, through llama-cpp-python, on a GGUF: the ids it tokenizes TEXT into, and its logits at
the last position of IDS (comma-separated), as JSON. The independent check that a GGUF rtlab wrote
loads in the runtime Ollama embeds, with the same vocabulary and the same next-token scores.

Usage: llama_cpp_logits.py MODEL.gguf TEXT IDS
"""

import json
import sys

from llama_cpp import Llama

path, text, ids = sys.argv[1], sys.argv[2], [int(i) for i in sys.argv[3].split(",")]
# `logits_all`: without it, 0.3.x keeps no scores after `eval` (its sampler reads them inside).
llm = Llama(model_path=path, n_ctx=256, n_threads=2, n_batch=256, logits_all=True, verbose=False)
# `special=False`: the text is plain text; rtlab's `tokens` does not add BOS for this vocabulary, and
# neither does llama.cpp when asked not to.
tokenized = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
llm.eval(ids)
logits = llm.scores[len(ids) - 1].tolist()
print(json.dumps({"ids": tokenized, "logits": logits}))
