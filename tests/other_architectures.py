"""Small local checkpoints of *other* architectures than the defaults, for checking that the kit
works with `COSTLAB_LM` / `COSTLAB_ENCODER` pointing at a folder: a GPT-2 causal LM (Conv1D
projections, fused c_attn, learned positions) with SmolLM2's tokenizer, and a DistilBERT encoder
(q_lin/v_lin, no token types) with MiniLM's tokenizer. Random weights (nothing can be downloaded
here), saved as safetensors with config.json and tokenizer files, as a learner's own would be.

    python -m tests.other_architectures /tmp/alt     # writes /tmp/alt/gpt2 and /tmp/alt/distilbert
    COSTLAB_LM=/tmp/alt/gpt2 COSTLAB_ENCODER=/tmp/alt/distilbert make course FORCE=1
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from costlab import models


def write_gpt2(folder: Path, *, layers: int = 4, width: int = 128) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    _, tokenizer = models.load("smollm2", layers=1)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=width, n_layer=layers, n_head=4, n_positions=512,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_distilbert(folder: Path, *, layers: int = 4, width: int = 128) -> Path:
    from transformers import DistilBertConfig, DistilBertModel

    _, tokenizer = models.load("minilm", layers=1)
    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=len(tokenizer), dim=width, n_layers=layers, n_heads=4,
                              hidden_dim=4 * width, pad_token_id=tokenizer.pad_token_id)
    DistilBertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "other-architectures")
    print(write_gpt2(root / "gpt2"), write_distilbert(root / "distilbert"))
