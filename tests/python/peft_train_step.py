"""PyTorch + PEFT baseline for benches/train.rs: tokens/s of LoRA training steps on a model dir.

  peft_train_step.py BASE BATCH SEQ STEPS  -> prints tokens=T, tokens_per_s=X and peak_mb=Y
Same recipe as the rtlab side: r 64, alpha 128, dropout 0.05, all seven projections, AdamW, f32, the
whole graph kept (PEFT's default). One warm-up step, then STEPS timed steps; tokens are all the steps'
(BATCH x SEQ each), which the bench compares with rtlab's count. The tokens are random ids (a step's
work does not depend on their values); the loss is on every token, where rtlab's leaves out the
rows' 45-token prompts: the same products either way.
"""
import resource
import sys
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

base, batch, seq, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained(base, torch_dtype=torch.float32)
cfg = LoraConfig(r=64, lora_alpha=128, lora_dropout=0.05, task_type="CAUSAL_LM",
                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
model = get_peft_model(model, cfg)
model.train()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
vocab = model.config.vocab_size
ids = torch.randint(0, vocab, (batch, seq))


def step():
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    opt.step()
    opt.zero_grad()


step()  # warm up
start = time.perf_counter()
for _ in range(steps):
    step()
secs = time.perf_counter() - start
print(f"tokens={batch * seq * (steps + 1)}")
print(f"tokens_per_s={batch * seq * steps / secs}")
print(f"peak_mb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}")
