"""Advantage normalization (ICE-GRT): batch whitening over all processes, none, or per prompt group."""

from __future__ import annotations

import torch

from ...plugins.registry import register_plugin
from ..core import group_whiten, masked_whiten
from .base import PPOPlugin


class AdvantageNormalizer(PPOPlugin):
    kind = "advantage_normalization"

    def __call__(self, advantages: torch.Tensor, mask: torch.Tensor, group_size: int = 1,
                 all_reduce_sum=None) -> torch.Tensor:
        return advantages * mask


@register_plugin
class NoAdvantageNormalization(AdvantageNormalizer):
    name = "none"


@register_plugin
class WhitenAdvantages(AdvantageNormalizer):
    """A ← (A − mean)/std over every response token of the global batch (trl 1.12 did it per process)."""

    name = "whiten"

    def __call__(self, advantages, mask, group_size=1, all_reduce_sum=None):
        return masked_whiten(advantages, mask, all_reduce_sum=all_reduce_sum)


@register_plugin
class GroupAdvantages(AdvantageNormalizer):
    """Whiten within the samples of one prompt (``num_samples_per_prompt`` rows, kept on one process)."""

    name = "group"

    def __call__(self, advantages, mask, group_size=1, all_reduce_sum=None):
        if group_size < 2:
            raise ValueError("advantage_normalization='group' needs num_samples_per_prompt >= 2.")
        return group_whiten(advantages, mask, group_size)
