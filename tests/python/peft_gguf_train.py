"""PyTorch + PEFT baseline for the training part of benches/gguf.rs: LoRA on SmolLM2 itself.

  peft_gguf_train.py MODEL_DIR GGUF_FILE ROWS.jsonl BATCH MAX_LEN CHECKPOINT(0|1) TEMPLATE
      -> prints steps=N, tokens=T, steady_tokens_per_s=X and peak_rss_mb=Y

transformers dequantizes the GGUF to f32, as rtlab's f32 base does. The recipe is the rtlab side's:
r 8, alpha 16, dropout 0.05 on q_proj and v_proj, AdamW lr 2e-4, one epoch over ROWS (instruction,
output) in order, BATCH rows a step, each row the prompt template + response + eos, the loss on the
response tokens only, gradient checkpointing when CHECKPOINT is 1. TEMPLATE (with `{prompt}`) is
the one the rtlab side is given. Every step but the first (warm-up) is timed, as rtlab's
`steady_tokens_per_s` times them; tokens are the rows' real tokens (padding excluded), all steps',
which the bench compares with rtlab's count.
"""
import json
import resource
import sys
import time

import torch
from peft import LoraConfig, get_peft_model

from gguf_f32 import load_f32

model_dir, gguf, rows_path = sys.argv[1], sys.argv[2], sys.argv[3]
batch, max_len, checkpoint = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6] == "1"
template = sys.argv[7]
torch.manual_seed(0)
model, tok = load_f32(model_dir, gguf)
if checkpoint:
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, task_type="CAUSAL_LM", target_modules=["q_proj", "v_proj"])
model = get_peft_model(model, cfg)
model.train()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)

rows = [json.loads(line) for line in open(rows_path, encoding="utf-8")]
examples = []
for r in rows:
    p = tok(template.replace("{prompt}", r["instruction"]), add_special_tokens=False)["input_ids"]
    c = tok(r["output"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = (p + c)[:max_len]
    labels = ([-100] * len(p) + c)[:max_len]
    examples.append((ids, labels))


def collate(chunk):
    width = max(len(i) for i, _ in chunk)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids = torch.tensor([i + [pad] * (width - len(i)) for i, _ in chunk])
    labels = torch.tensor([l + [-100] * (width - len(l)) for _, l in chunk])
    mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in chunk])
    return ids, labels, mask, sum(len(i) for i, _ in chunk)


steps = [collate(examples[i:i + batch]) for i in range(0, len(examples), batch)]
timed_tokens, timed_secs, all_tokens = 0, 0.0, 0
for step, (ids, labels, mask, count) in enumerate(steps):
    start = time.perf_counter()
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    opt.step()
    opt.zero_grad()
    all_tokens += count
    if step > 0:
        timed_secs += time.perf_counter() - start
        timed_tokens += count
print(f"steps={len(steps)}")
print(f"tokens={all_tokens}")
print(f"steady_tokens_per_s={timed_tokens / timed_secs}")
print(f"peak_rss_mb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}")
