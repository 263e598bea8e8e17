"""Forwards that compute a prompt prefix shared by every row once.

A chat template puts the same tokens at the head of every prompt (SmolLM2's default system turn: 24 tokens), and a
dataset often adds a fixed instruction. A decoder's hidden states at those positions are the
same in every row, so a forward can compute them on one row and let each row's remaining tokens attend to that row's
keys and values through the KV cache: the same logits and gradients (up to float rounding) for ``(B - 1) × P``
fewer token positions. Under autograd the cache keeps its graph, so the backward sums every row's gradient into the
one prefix computation.

Rows are ``[B, W]`` id and mask tensors whose real tokens are contiguous (left or right padding).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache

# Below this many shared tokens the extra batch-1 forward costs about what it saves.
MIN_SHARED_PREFIX_TOKENS = 8


def first_real_index(mask: torch.Tensor) -> torch.Tensor:
    """Column of each row's first real token (``[B]``); rows are left or right padded."""
    return mask.ne(0).int().argmax(1)


def shared_prefix_length(ids: torch.Tensor, mask: torch.Tensor, max_length: int) -> int:
    """Length of the longest token run that every row's real tokens start with, at most ``max_length``."""
    n = min(int(max_length), int(mask.ne(0).sum(1).min()))
    if n <= 0 or ids.shape[0] < 2:
        return 0
    cols = first_real_index(mask)[:, None] + torch.arange(n, device=ids.device)[None]
    heads = ids.gather(1, cols)
    same = (heads == heads[:1]).all(0)
    return n if bool(same.all()) else int(same.int().argmin())


def prefix_length_to_share(ids: torch.Tensor, mask: torch.Tensor, prompt_columns: int | None = None) -> int:
    """The shared prefix worth taking out of these rows: within the prompts (the first ``prompt_columns`` columns of
    a rollout; all columns if None), short of each row's last such token (its outputs are read: the first response
    token's logits, a reward model's score), and 0 below :data:`MIN_SHARED_PREFIX_TOKENS`."""
    if prompt_columns is not None:
        ids, mask = ids[:, :prompt_columns], mask[:, :prompt_columns]
    p = shared_prefix_length(ids, mask, int(mask.ne(0).sum(1).min()) - 1)
    return p if p >= MIN_SHARED_PREFIX_TOKENS else 0


@dataclass
class PrefixSplit:
    """One forward's inputs with their shared prefix taken out: ``prefix_ids`` ``[1, P]`` is run once; each row's
    remaining tokens ``rest_ids`` ``[B, W - P]`` (same padding side) attend to it through ``attention_mask``
    ``[B, W]`` (the prefix's P columns, then ``rest_mask``) at ``position_ids`` that continue after it."""

    length: int
    prefix_ids: torch.Tensor
    rest_ids: torch.Tensor
    rest_mask: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor

    @property
    def rows(self) -> int:
        return self.rest_ids.shape[0]


def split_shared_prefix(ids: torch.Tensor, mask: torch.Tensor, length: int) -> PrefixSplit:
    """Take the first ``length`` real tokens (the same in every row) out of each row. Left padding stays in front
    of what remains, so right-aligned columns (a rollout's responses) keep their place from the right."""
    b, w = ids.shape
    start = first_real_index(mask)
    j = torch.arange(w - length, device=ids.device)[None]
    after_padding = j >= start[:, None]
    take = j + length * after_padding  # padding columns stay; real columns shift left by `length`
    rest_ids, rest_mask = ids.gather(1, take), mask.gather(1, take)
    ones = torch.ones(b, length, dtype=mask.dtype, device=mask.device)
    positions = length + (rest_mask.long().cumsum(1) - 1).clamp(min=0)
    return PrefixSplit(length, ids[:1, int(start[0]):int(start[0]) + length], rest_ids, rest_mask,
                       torch.cat([ones, rest_mask], 1), positions)


class ReadOnlyPrefixCache(DynamicCache):
    """A prefix's KV cache that the rows' forward reads but never extends: each layer gets the prefix's keys and
    values followed by its own, and the cache keeps the prefix alone. So activation checkpointing may replay the
    forward in the backward pass (it would append a second time to a cache that grows)."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        layer = self.layers[layer_idx]
        return torch.cat([layer.keys, key_states], -2), torch.cat([layer.values, value_states], -2)


def _checkpointed_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True
            and hasattr(m, "_gradient_checkpointing_func")]


@contextlib.contextmanager
def _checkpointing_paused(model: nn.Module):
    """The prefix forward is not checkpointed: its cache is written once (a replay would write it again), and at
    batch 1 its activations are small."""
    layers = _checkpointed_layers(model)
    for m in layers:
        m.gradient_checkpointing = False
    try:
        yield
    finally:
        for m in layers:
            m.gradient_checkpointing = True


@contextlib.contextmanager
def cache_kept_under_checkpointing(model: nn.Module):
    """transformers' checkpointed layers drop ``past_key_values`` unless ``_can_checkpoint_with_cache`` (for layers
    that only read the cache, as they do a :class:`ReadOnlyPrefixCache`): set it on them for this forward."""
    layers = _checkpointed_layers(model)
    for m in layers:
        m._can_checkpoint_with_cache = True
    try:
        yield
    finally:
        for m in layers:
            del m._can_checkpoint_with_cache  # back to the class's False


def reentrant_checkpointing(model: nn.Module) -> bool:
    """Whether a checkpointed layer of ``model`` uses reentrant checkpointing, which gives no gradient to tensors
    a layer reads from its keyword arguments (the prefix's keys and values), or a checkpoint function whose kind is
    not known."""
    for m in _checkpointed_layers(model):
        fn = m._gradient_checkpointing_func
        while hasattr(fn, "__wrapped__"):
            fn = fn.__wrapped__
        if not isinstance(fn, functools.partial) or fn.keywords.get("use_reentrant") is not False:
            return True  # torch's default when use_reentrant is not given is reentrant
    return False


def _takes_use_cache(model: nn.Module) -> bool:
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "use_cache" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def prefix_cache(model: nn.Module, split: PrefixSplit, repeat: bool = True, **kwargs):
    """The KV cache of ``split.prefix_ids`` under ``model`` (a transformers decoder, its body, or a PeftModel, called
    with ``kwargs``), repeated to every row (``repeat=False``: one row, for a padding-free forward); None if the model
    keeps no cache (an encoder such as a DeBERTa reward model, a custom model): the caller then runs its plain
    forward. Such a model is remembered and not asked again."""
    if getattr(model, "_icegrt_no_kv_cache", False) or not _takes_use_cache(model):
        return None
    with _checkpointing_paused(model):
        out = model(input_ids=split.prefix_ids, attention_mask=torch.ones_like(split.prefix_ids), use_cache=True,
                    **kwargs)
    cache = getattr(out, "past_key_values", None)
    # a plain DynamicCache of full-attention layers only: a sliding-window layer keeps a cropped prefix, other
    # caches (hybrid, recurrent state) hold more than keys and values
    if type(cache) is not DynamicCache or any(cache.is_sliding):
        try:
            object.__setattr__(model, "_icegrt_no_kv_cache", True)
        except AttributeError:
            pass
        return None
    if repeat:
        cache.batch_repeat_interleave(split.rows)
    cache.__class__ = ReadOnlyPrefixCache  # same layout; reads only from here on
    return cache


def forward_after_prefix(model: nn.Module, split: PrefixSplit, cache, **kwargs):
    """``model`` on the rows' rest after the prefix of ``cache`` (see :func:`prefix_cache`); under non-reentrant
    activation checkpointing too."""
    with cache_kept_under_checkpointing(model):
        return model(**rest_inputs(split, cache), use_cache=False, **kwargs)


def rest_inputs(split: PrefixSplit, cache) -> dict:
    """Keyword inputs of the rows' forward after their prefix: the last ``W - P`` positions' outputs come back."""
    return {"input_ids": split.rest_ids, "attention_mask": split.attention_mask, "position_ids": split.position_ids,
            "past_key_values": cache}


def reentrant_checkpointing_in_training(model: nn.Module) -> bool:
    """Whether a forward of ``model`` now runs with reentrant activation checkpointing (see
    :func:`reentrant_checkpointing`): a shared prefix would get no gradient from the rows."""
    return model.training and reentrant_checkpointing(model)
