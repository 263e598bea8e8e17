"""Tiny models of real architectures (Llama, Qwen2), built from configs with random weights.

Defaults (4 layers, width 128) give ~0.8M parameters with the testbed vocabulary, small enough to learn
the digit tasks from scratch on two CPU cores in about a minute.
"""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    Qwen2Config,
)

ARCHITECTURES = ("llama", "qwen2")


def tiny_config(
    arch: str,
    tokenizer: PreTrainedTokenizerBase,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 128,
    **kwargs,
) -> PretrainedConfig:
    """A config of `arch` sized for the testbed, with the tokenizer's special token ids."""
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=False,
        **kwargs,
    )
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "qwen2":
        return Qwen2Config(**common)
    raise ValueError(f"Unknown testbed architecture {arch!r}; choose one of {ARCHITECTURES}.")


def tiny_causal_lm(arch: str, tokenizer: PreTrainedTokenizerBase, seed: int = 0, **config_kwargs):
    """A randomly initialised causal LM (the policy), e.g. `LlamaForCausalLM`."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, tokenizer, **config_kwargs))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def tiny_sequence_classifier(arch: str, tokenizer: PreTrainedTokenizerBase, seed: int = 0, num_labels: int = 1,
                             **config_kwargs):
    """A randomly initialised sequence classifier with one output (reward or value model)."""
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(
        tiny_config(arch, tokenizer, num_labels=num_labels, **config_kwargs)
    )


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
