"""A GGUF as a plain f32 transformers model, for the PyTorch baselines (trl_dpo_step.py,
peft_gguf_train.py).

transformers dequantizes a GGUF to f32 but marks the model GGUF-quantized, which Trainer and PEFT
training refuse (and save_pretrained will not write): the same weights go into a plain f32 model.
"""
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def load_f32(model_dir, gguf):
    """(model, tokenizer) of the GGUF file `gguf` in `model_dir`, dequantized to f32."""
    marked = AutoModelForCausalLM.from_pretrained(model_dir, gguf_file=gguf, dtype=torch.float32)
    config = marked.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(marked.state_dict())
    del marked
    return model, AutoTokenizer.from_pretrained(model_dir, gguf_file=gguf)
