"""TRL baseline for benches/dpo.rs: tokens/s of DPO steps (LoRA, CPU, f32) with TRL's DPOTrainer.

  trl_dpo_step.py MODEL PAIRS.jsonl BATCH STEPS [GGUF_FILE]
      -> prints steps=N, tokens=T (all steps'), steady_tokens_per_s=X (steps after the first)
MODEL is a Hugging Face dir (or the dir of GGUF_FILE, which transformers dequantizes to f32).
The recipe is the rtlab side's: sigmoid loss, beta 0.1, r 16, alpha 32, no dropout, all seven
projections, AdamW lr 5e-4, reference = the base with the adapters off, its log-probs computed
before training (precompute_ref_log_probs), so only optimizer steps are timed on both sides.
Tokens are counted as rtlab counts them: prompt + completion + eos, for chosen and for rejected.
"""
import json
import sys
import time

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, TrainerCallback
from trl import DPOConfig, DPOTrainer

from gguf_f32 import load_f32

model_dir, pairs_path, batch, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
gguf = sys.argv[5] if len(sys.argv) > 5 else None
torch.manual_seed(0)
rows = [json.loads(line) for line in open(pairs_path, encoding="utf-8")]
if gguf:
    model, tok = load_f32(model_dir, gguf)
else:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tok = PreTrainedTokenizerFast(tokenizer_file=f"{model_dir}/tokenizer.json", eos_token="<|endoftext|>")
if tok.pad_token is None:
    tok.pad_token = tok.eos_token


def tokens(row):
    p = len(tok(row["prompt"], add_special_tokens=False)["input_ids"])
    c = len(tok(row["chosen"], add_special_tokens=False)["input_ids"])
    r = len(tok(row["rejected"], add_special_tokens=False)["input_ids"])
    return 2 * p + c + r + 2


class StepTimer(TrainerCallback):
    def __init__(self):
        self.durations = []
        self.start = None

    def on_step_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.durations.append(time.perf_counter() - self.start)


timer = StepTimer()
config = DPOConfig(output_dir="/tmp/rtlab-trl-dpo", per_device_train_batch_size=batch, gradient_accumulation_steps=1,
                   max_steps=steps, learning_rate=5e-4, beta=0.1, loss_type="sigmoid", precompute_ref_log_probs=True,
                   max_length=1024, report_to="none", use_cpu=True, logging_steps=1000, save_strategy="no",
                   disable_dropout=True, bf16=False, fp16=False, seed=0, dataloader_num_workers=0, lr_scheduler_type="constant")
peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                         target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
trainer = DPOTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tok,
                     peft_config=peft_config, callbacks=[timer])
trainer.train()
# The first step warms up (allocations, kernels); the rest are timed. Each step takes `batch` pairs
# in the dataset's order (TRL shuffles; every pair here has the same length on both sides).
timed = timer.durations[1:]
per_step = sum(tokens(r) for r in rows) / len(rows) * batch
print(f"steps={len(timer.durations)}")
print(f"tokens={round(per_step * len(timer.durations))}")
print(f"steady_tokens_per_s={per_step * len(timed) / sum(timed)}")
