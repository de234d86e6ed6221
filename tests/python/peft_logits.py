"""Cross-checks rtlab's model and adapters against transformers + peft (run by tests/train.rs, ignored
unless RTLAB_PYTHON names a Python with torch, transformers and peft).

  peft_logits.py check BASE ADAPTER TEXT RTLAB_LOGITS.json   -> prints max_rel_err=E (rtlab's adapter in PEFT)
  peft_logits.py make  BASE OUT_ADAPTER TEXT OUT_LOGITS.json -> a PEFT-made adapter (random B) and its logits
"""
import json
import sys

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer


def logits_of(model, base, text):
    tok = AutoTokenizer.from_pretrained(base)
    ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids).logits[0].double()


def main():
    mode, base, adapter, text, path = sys.argv[1:6]
    model = AutoModelForCausalLM.from_pretrained(base, torch_dtype=torch.float32)
    if mode == "check":
        model = PeftModel.from_pretrained(model, adapter).eval()
        theirs = logits_of(model, base, text)
        mine = torch.tensor(json.load(open(path)), dtype=torch.float64)
        assert mine.shape == theirs.shape, (mine.shape, theirs.shape)
        err = (mine - theirs).abs().max() / max(1.0, theirs.abs().max().item())
        print(f"max_rel_err={err.item():.3e}")
    else:
        torch.manual_seed(0)
        cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"],
                         lora_dropout=0.0, task_type="CAUSAL_LM", init_lora_weights=False)
        model = get_peft_model(model, cfg).eval()
        model.save_pretrained(adapter)
        json.dump(logits_of(model, base, text).tolist(), open(path, "w"))
        print("made")


main()
