"""llama.cpp's batched decoding, the peer of rtlab's batch in `cargo bench --bench gguf -- decode`.

usage: python3 llama_cpp_batch.py MODEL.gguf PROMPT... N TOKENS
  -> prints tokens=T and seconds=S

Each PROMPT (through the GGUF's chat template, as rtlab formats it) is prefilled once; with one
PROMPT its KV cells are shared by N sequences (`llama_memory_seq_cp`, no copy), with several each is
its own sequence (N is then the number of prompts). Every step decodes one token of every unfinished
sequence in one `llama_decode` (llama.cpp's continuous batching, as `llama-batched` and the server
do), each sampled at temperature 0.8 from the whole vocabulary by its own seeded chain, until its
end-of-generation token or TOKENS tokens. Seconds run from before the first prefill to the last
step, as rtlab's batch is timed; tokens are the sampled tokens before each sequence's end. llama.cpp
runs on 2 threads, its default f16 KV cache, through llama-cpp-python's bindings of its C API.
"""

import sys
import time

import jinja2
import llama_cpp as L

model_path, prompts, n, max_tokens = sys.argv[1], sys.argv[2:-2], int(sys.argv[-2]), int(sys.argv[-1])
shared = len(prompts) == 1
if not shared and len(prompts) != n:
    sys.exit(f"give one prompt, or N = {n} prompts (got {len(prompts)})")

# The chat template and tokenizer from the file, as rtlab applies them.
meta = L.Llama(model_path=model_path, vocab_only=True, verbose=False)
template = jinja2.Template(meta.metadata["tokenizer.chat_template"])


def prompt_ids(text):
    chat = template.render(messages=[{"role": "user", "content": text}], add_generation_prompt=True)
    return meta.tokenize(chat.encode(), add_bos=False, special=True)


ids = [prompt_ids(p) for p in prompts]

L.llama_backend_init()
model = L.llama_model_load_from_file(model_path.encode(), L.llama_model_default_params())
params = L.llama_context_default_params()
params.n_ctx = n * (max(len(i) for i in ids) + max_tokens + 8)
params.n_batch = params.n_ubatch = max(512, max(len(i) for i in ids), n)
params.n_seq_max = n
params.n_threads = params.n_threads_batch = 2
# One prompt's cells are shared by its sequences only in one unified cache; separate prompts get
# a stream each, so each sequence attends over its own cells only.
params.kv_unified = shared
ctx = L.llama_init_from_model(model, params)
vocab = L.llama_model_get_vocab(model)
memory = L.llama_get_memory(ctx)
batch = L.llama_batch_init(params.n_batch, 0, n)


def sampler(seed):
    chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
    L.llama_sampler_chain_add(chain, L.llama_sampler_init_temp(0.8))
    L.llama_sampler_chain_add(chain, L.llama_sampler_init_dist(seed))
    return chain


def decode(entries):
    """entries: (token, position, sequence, wants logits); returns the batch index of each."""
    batch.n_tokens = len(entries)
    for i, (token, pos, seq, logits) in enumerate(entries):
        batch.token[i] = token
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = logits
    if L.llama_decode(ctx, batch) != 0:
        sys.exit("llama_decode failed")


def prefill(seq, prompt):
    decode([(t, p, seq, p == len(prompt) - 1) for p, t in enumerate(prompt)])
    return len(prompt) - 1


# Warm-up (weights paged in, threads started), then a clean cache.
decode([(t, p, 0, p == len(ids[0]) - 1) for p, t in enumerate(ids[0])])
L.llama_memory_clear(memory, True)

samplers = [sampler(s) for s in range(n)]
start = time.time()
next_token, position, last_index = [0] * n, [0] * n, [0] * n
if shared:
    index = prefill(0, ids[0])
    for s in range(1, n):
        L.llama_memory_seq_cp(memory, 0, s, -1, -1)
    for s in range(n):
        next_token[s] = L.llama_sampler_sample(samplers[s], ctx, index)
        position[s] = len(ids[0])
else:
    for s in range(n):
        index = prefill(s, ids[s])
        next_token[s] = L.llama_sampler_sample(samplers[s], ctx, index)
        position[s] = len(ids[s])
tokens = 0
active = list(range(n))
for _ in range(max_tokens):
    active = [s for s in active if not L.llama_vocab_is_eog(vocab, next_token[s])]
    if not active:
        break
    tokens += len(active)
    if _ == max_tokens - 1:
        break
    decode([(next_token[s], position[s], s, True) for s in active])
    for i, s in enumerate(active):
        position[s] += 1
        next_token[s] = L.llama_sampler_sample(samplers[s], ctx, i)
seconds = time.time() - start
print(f"tokens={tokens}")
print(f"seconds={seconds}")
