"""Eager attention that reads each key/value head once for its whole group of query heads.

Under grouped-query attention (SmolLM2: 9 query heads on 3 key/value heads) transformers' eager attention copies
every key and value head once per query head of its group (``repeat_kv``) before its two matmuls, and the backward
sums those copies back. Folding a group's query heads into the rows of one matmul against their shared key head
computes the same dot products in the same order, without the copies: forward outputs bit-equal to eager's, and a
bf16 training step of SmolLM2-135M (8 rows x 87 columns, prefix shared, fwd + bwd + AdamW) took 1.643 s against
1.693 s (medians of 10 alternations, ``benchmarks/grouped_attention_step.py``; docs/benchmarks.md). The gradients
agree up to float rounding (the backward sums in another order).

Used where eager attention replaces SDPA on a CPU under bf16 (``PPOConfig.cpu_bf16_eager_attention``), for the
decoders in :data:`GROUPED_MODEL_TYPES`, whose eager attention is exactly this computation with copies.
"""

from __future__ import annotations

import torch
from torch import nn

from .padding_free import ROWS_KWARG, attend_packed

IMPLEMENTATION = "icegrt_grouped_eager"
# The same attention, for models whose PPO forwards run padding-free (:mod:`.padding_free`): called with a
# ``PackedRows`` it attends row by row over the packed tokens.
PADDING_FREE = "icegrt_padding_free_eager"

# Decoders whose attention layers call the attention function with transformers' plain eager semantics: scaled
# scores plus an additive mask (which carries any sliding window), fp32 softmax, dropout; no soft-capping, no sinks.
GROUPED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})

def grouped_eager_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0, **kwargs):
    """transformers' attention-function signature: ``query`` ``[B, H, Q, D]``, ``key``/``value`` ``[B, KV, S, D]``
    with ``H = KV · G``, query head ``h`` reading key/value head ``h // G`` (``repeat_kv``'s layout); ``attention_mask``
    additive, ``[B or 1, 1, Q, S]``. Returns ``([B, Q, H, D], weights [B, H, Q, S])`` as eager attention does.
    With a ``PackedRows`` under :data:`.padding_free.ROWS_KWARG`, the inputs are packed rows (``B = 1``): see
    :func:`.padding_free.attend_packed` (no weights are returned then)."""
    rows = kwargs.pop(ROWS_KWARG, None)
    if rows is not None:
        return attend_packed(grouped_eager_attention, module, query, key, value, attention_mask, rows,
                             scaling=scaling, dropout=dropout)
    b, heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads
    # the G query heads of a key/value head become G·Q rows of one product with that head
    folded = query.reshape(b, kv_heads, group * q_len, dim)
    weights = torch.matmul(folded, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        s = weights.shape[-1]
        weights = (weights.view(b, kv_heads, group, q_len, s) + attention_mask.unsqueeze(2)).view(
            b, kv_heads, group * q_len, s)
    weights = nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    out = torch.matmul(weights, value).view(b, heads, q_len, dim).transpose(1, 2).contiguous()
    return out, weights.view(b, heads, q_len, -1)


def register(name: str = IMPLEMENTATION) -> str:
    """Register :func:`grouped_eager_attention` with transformers (with eager's mask) under ``name``
    (:data:`IMPLEMENTATION` or :data:`PADDING_FREE`); returns the name. Registering again replaces the entries with
    the same functions."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(name, grouped_eager_attention)
    AttentionMaskInterface.register(name, eager_mask)
    return name


def _has_sliding_window(text) -> bool:
    """Whether any layer of the text config ``text`` attends through a sliding window."""
    layer_types = getattr(text, "layer_types", None)
    if layer_types:
        return any(t != "full_attention" for t in layer_types)
    return getattr(text, "sliding_window", None) is not None and getattr(text, "use_sliding_window", True)


def eager_implementation_for(config, padding_free: bool = False) -> str:
    """The eager attention to use for a model of ``config``: for a listed decoder, :data:`PADDING_FREE` if
    ``padding_free`` and no layer attends through a sliding window (the packed rows' mask has none), else
    :data:`IMPLEMENTATION` with fewer key/value heads than query heads; otherwise transformers' ``"eager"``."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = getattr(text, "num_attention_heads", None)
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    if getattr(text, "model_type", None) not in GROUPED_MODEL_TYPES or not heads or heads % kv_heads:
        return "eager"
    if padding_free and not _has_sliding_window(text):
        return register(PADDING_FREE)
    return register() if heads > kv_heads else "eager"
