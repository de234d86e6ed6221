"""PyTorch + PEFT baseline for the training part of benches/gguf.rs: LoRA on SmolLM2 itself.

  peft_gguf_train.py MODEL_DIR GGUF_FILE ROWS.jsonl BATCH MAX_LEN CHECKPOINT(0|1)
      -> prints tokens_per_s=X and peak_rss_mb=Y

transformers dequantizes the GGUF to f32, as rtlab's f32 base does. The recipe is the rtlab side's:
r 8, alpha 16, dropout 0.05 on q_proj and v_proj, AdamW lr 2e-4, one epoch over ROWS (instruction,
output) in order, BATCH rows a step, each row the prompt template + response + eos, the loss on the
response tokens only, gradient checkpointing when CHECKPOINT is 1. Every step is timed, the first
too, as rtlab's `tokens_per_s` counts them; tokens are the rows' real tokens (padding excluded).
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
torch.manual_seed(0)
model, tok = load_f32(model_dir, gguf)
if checkpoint:
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, task_type="CAUSAL_LM", target_modules=["q_proj", "v_proj"])
model = get_peft_model(model, cfg)
model.train()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)

# rtlab's default prompt template (crates/model/src/examples.rs, DEFAULT_TEMPLATE).
TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n"
rows = [json.loads(line) for line in open(rows_path, encoding="utf-8")]
examples = []
for r in rows:
    p = tok(TEMPLATE.format(prompt=r["instruction"]), add_special_tokens=False)["input_ids"]
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
timed_tokens, timed_secs = 0, 0.0
for ids, labels, mask, count in steps:
    start = time.perf_counter()
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    opt.step()
    opt.zero_grad()
    timed_secs += time.perf_counter() - start
    timed_tokens += count
print(f"tokens_per_s={timed_tokens / timed_secs}")
print(f"peak_rss_mb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}")
