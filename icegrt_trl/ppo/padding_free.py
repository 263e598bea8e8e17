"""Padding-free forwards: the PPO forwards run on each row's tokens without its left padding.

A rollout's rows are left padded to the longest prompt of their batch (SmolLM2 on the chat testbed: 11 % of the
positions in a batch of 8, and 15 % of the positions left after a shared prompt prefix). Every linear layer, norm
and activation of a decoder computes those positions too. Here the rows' real tokens are packed into one sequence
``[1, T]`` (positions as before), so those layers see ``T`` positions instead of ``B × W``; only attention, where
rows must not see each other, puts the tokens back into their rows, runs the grouped eager attention of
:mod:`.grouped_attention` on them with the mask the padded forward would use (the shared prefix's keys and
values, from a batch-1 cache, included), and packs the outputs again. TRL's ``padding_free`` does the same with
flash attention's variable-length kernels on a GPU; this is the CPU bf16 path (``PPOConfig.cpu_bf16_padding_free``).

A row is kept from its first real token to its end: responses stay right-aligned, and positions inside a response
that the attention mask hides (after an EOS) are computed as in the padded forward. Outputs come back in the padded
layout: logits ``[B, k, V]`` for ``logits_to_keep=k``, hidden states ``[B, W, H]`` (zeros at padding).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .prefix import PrefixSplit, cache_kept_under_checkpointing, first_real_index, prefix_cache

# The keyword that carries a PackedRows through a transformers model down to its attention function.
ROWS_KWARG = "icegrt_packed_rows"


@dataclass
class PackedRows:
    """Where each packed token sits in the padded ``[B, W]`` layout (slot ``b·W + c``), and back.

    ``token_slots`` ``[T]``: the slot of each packed token, row by row. ``slot_tokens`` ``[B·W]``: the packed token
    at each slot; a padding slot points at token 0, whose copy there is masked as a key and dropped as a query.
    ``key_mask`` ``[B, P + W]``: the padded forward's attention mask (the prefix's P columns first)."""

    rows: int
    width: int
    prefix: int
    token_slots: torch.Tensor
    slot_tokens: torch.Tensor
    key_mask: torch.Tensor
    _masks: dict = field(default_factory=dict, repr=False)

    @property
    def tokens(self) -> int:
        return self.token_slots.numel()

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, W]`` → ``[1, T]``: the kept positions of each row, one row after the other."""
        return x.reshape(-1)[self.token_slots][None]

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """``[1, T, ...]`` → ``[B, W, ...]``, zeros at padding."""
        flat = x.new_zeros(self.rows * self.width, *x.shape[2:]).index_copy(0, self.token_slots, x[0])
        return flat.view(self.rows, self.width, *x.shape[2:])

    def last_positions(self, k: int) -> torch.Tensor:
        """Packed indices of each row's last ``k`` positions, row by row (``[B·k]``): a ``logits_to_keep``."""
        b = torch.arange(self.rows, device=self.token_slots.device)[:, None]
        cols = torch.arange(self.width - k, self.width, device=self.token_slots.device)[None]
        return self.slot_tokens[(b * self.width + cols).reshape(-1)]

    def additive_mask(self, dtype: torch.dtype) -> torch.Tensor:
        """``[B, 1, W, P + W]``: 0 where a row's query may attend (a real key at or before it, prefix included),
        the dtype's minimum elsewhere, as transformers' eager mask."""
        if dtype not in self._masks:
            p, w = self.prefix, self.width
            dev = self.key_mask.device
            causal = torch.arange(p + w, device=dev)[None] <= p + torch.arange(w, device=dev)[:, None]
            allowed = causal[None] & self.key_mask.bool()[:, None, :]
            self._masks[dtype] = torch.zeros(allowed.shape, dtype=dtype, device=dev).masked_fill_(
                ~allowed, torch.finfo(dtype).min)[:, None]
        return self._masks[dtype]

    def rows_of(self, states: torch.Tensor) -> torch.Tensor:
        """Queries ``[1, H, T, D]`` → ``[B, H, W, D]``; keys or values ``[1, KV, P + T, D]`` → ``[B, KV, P + W, D]``
        (the prefix's shared by every row)."""
        heads, dim, p = states.shape[1], states.shape[-1], states.shape[2] - self.tokens
        rest = states[0, :, p:].index_select(1, self.slot_tokens).view(heads, self.rows, self.width, dim)
        rest = rest.transpose(0, 1)
        return torch.cat([states[:, :, :p].expand(self.rows, -1, -1, -1), rest], 2) if p else rest

    def pack_attention_output(self, out: torch.Tensor) -> torch.Tensor:
        """``[B, W, H, D]`` → ``[1, T, H, D]``."""
        return out.reshape(self.rows * self.width, *out.shape[2:]).index_select(0, self.token_slots)[None]


def packed_rows(mask: torch.Tensor, key_mask: torch.Tensor | None = None, prefix: int = 0) -> PackedRows:
    """The packing of rows ``mask`` ``[B, W]`` (left or right padded), each kept from its first real token; their
    keys' mask ``key_mask`` ``[B, prefix + W]`` (default ``mask``)."""
    b, w = mask.shape
    kept = torch.arange(w, device=mask.device)[None] >= first_real_index(mask)[:, None]
    token_slots = kept.reshape(-1).nonzero().squeeze(1)
    slot_tokens = torch.zeros(b * w, dtype=torch.long, device=mask.device)
    slot_tokens[token_slots] = torch.arange(token_slots.numel(), device=mask.device)
    return PackedRows(b, w, prefix, token_slots, slot_tokens, mask if key_mask is None else key_mask)


def attend_packed(attention, module: nn.Module, query, key, value, attention_mask, rows: PackedRows, **kwargs):
    """Run ``attention`` (an eager attention function) on packed ``query``/``key``/``value`` row by row, with the
    padded forward's mask (in the dtype of the mask transformers built for the packed sequence, which is unused)."""
    dtype = attention_mask.dtype if attention_mask is not None and attention_mask.is_floating_point() \
        else torch.float32
    out, _ = attention(module, rows.rows_of(query), rows.rows_of(key), rows.rows_of(value),
                       rows.additive_mask(dtype), **kwargs)
    return rows.pack_attention_output(out), None


def padding_free_output(model: nn.Module, input_ids, attention_mask, position_ids, split: PrefixSplit | None,
                        logits_to_keep: int, takes_logits_to_keep: bool, **kwargs):
    """``model`` (a decoder whose attention is :data:`.grouped_attention.PADDING_FREE`) on the rows packed, with
    its outputs put back into the padded layout (as :func:`.modeling.model_output` returns them)."""
    cache = None
    if split is not None:
        cache = prefix_cache(model, split, repeat=False, **({"logits_to_keep": 1} if takes_logits_to_keep else {}))
    if cache is not None:
        ids, mask, pos, key_mask, p = split.rest_ids, split.rest_mask, split.position_ids, split.attention_mask, \
            split.length
    else:
        ids, mask, pos, key_mask, p = input_ids, attention_mask, position_ids, attention_mask, 0
    rows = packed_rows(mask, key_mask, p)
    keep = {}
    if logits_to_keep > 0 and takes_logits_to_keep:
        keep = {"logits_to_keep": rows.last_positions(logits_to_keep)}
    with cache_kept_under_checkpointing(model):
        out = model(input_ids=rows.pack(ids), position_ids=rows.pack(pos), past_key_values=cache, use_cache=False,
                    **keep, **{ROWS_KWARG: rows}, **kwargs)
    if getattr(out, "logits", None) is not None:
        out.logits = out.logits.view(rows.rows, -1, out.logits.shape[-1]) if keep else rows.unpack(out.logits)
    if getattr(out, "last_hidden_state", None) is not None:
        out.last_hidden_state = rows.unpack(out.last_hidden_state)
    if getattr(out, "hidden_states", None) is not None:
        out.hidden_states = tuple(rows.unpack(h) for h in out.hidden_states)
    return out
