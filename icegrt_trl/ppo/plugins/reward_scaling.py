"""Reward scaling (ICE-GRT's "reward size scaling" as value scaling; Qwen's running-mean normalization).

Statistics are all-reduced across processes (``all_reduce_sum`` sums a tensor over processes), so every process
scales with the same numbers.
"""

from __future__ import annotations

import math

import torch

from ...plugins.registry import register_plugin
from .base import PPOPlugin


class RunningMoments:
    """Running mean/variance over all scores seen (Chan et al. parallel update), in float64."""

    def __init__(self, mean: float = 0.0, var: float = 1.0, count: float = 0.0):
        self.mean, self.var, self.count = mean, var, count

    def update(self, n: float, batch_mean: float, batch_var: float) -> None:
        """Merge a batch of ``n`` values with population variance ``batch_var``."""
        if n <= 0:
            return
        if self.count == 0:
            self.mean, self.var, self.count = batch_mean, batch_var, n
            return
        total = self.count + n
        delta = batch_mean - self.mean
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        self.mean, self.var, self.count = self.mean + delta * n / total, m2 / total, total

    @property
    def std(self) -> float:
        return math.sqrt(max(self.var, 0.0))

    def state_dict(self):
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, s):
        self.mean, self.var, self.count = float(s["mean"]), float(s["var"]), float(s["count"])


def _batch_moments(scores: torch.Tensor, all_reduce_sum) -> tuple[float, float, float]:
    stats = torch.stack([torch.tensor(float(scores.numel()), device=scores.device, dtype=torch.float64),
                         scores.double().sum(), scores.double().square().sum()])
    if all_reduce_sum is not None:
        stats = all_reduce_sum(stats)
    n, s, ss = (float(x) for x in stats)
    mean = s / max(n, 1)
    return n, mean, max(ss / max(n, 1) - mean**2, 0.0)


class RewardScaler(PPOPlugin):
    """Maps raw scores to the scores PPO optimizes; then clips to ±``clip`` if set."""

    kind = "reward_scaling"

    def __init__(self, clip: float | None = None, eps: float = 1e-8, **_):
        self.clip, self.eps = clip, eps

    @classmethod
    def from_config(cls, config=None, **overrides):
        kw = {"scale": config.reward_scale, "clip": config.reward_clip} if config is not None else {}
        return cls(**{**kw, **overrides})

    def scale(self, scores: torch.Tensor, all_reduce_sum=None) -> torch.Tensor:
        return scores

    def __call__(self, scores: torch.Tensor, all_reduce_sum=None) -> torch.Tensor:
        out = self.scale(scores, all_reduce_sum)
        return out.clamp(-self.clip, self.clip) if self.clip is not None else out


@register_plugin
class NoRewardScaling(RewardScaler):
    name = "none"


@register_plugin
class FixedRewardScaling(RewardScaler):
    """score · ``scale`` (e.g. to bring a big reward model's scores into a range the value head can fit)."""

    name = "fixed"

    def __init__(self, scale: float = 1.0, clip: float | None = None, **kw):
        super().__init__(clip=clip, **kw)
        self.factor = scale

    def scale(self, scores, all_reduce_sum=None):
        return scores * self.factor


MIN_REWARD_STD = 1e-2


@register_plugin
class RunningMeanStdScaling(RewardScaler):
    """(score − running mean)/max(running std, ``min_std``), the moments updated with each batch first (Qwen §3.2).

    ``min_std`` (default ``MIN_REWARD_STD`` = 0.01) floors the divisor: a first batch whose scores are all equal has
    std 0, and dividing by it (plus a tiny eps) multiplied later scores by ~1e8. With the floor, scores whose spread
    is below 0.01 are scaled by at most 100.
    """

    name = "running_meanstd"
    center = True

    def __init__(self, clip: float | None = None, min_std: float = MIN_REWARD_STD, **kw):
        super().__init__(clip=clip, **kw)
        if min_std <= 0:
            raise ValueError(f"min_std must be > 0, got {min_std}.")
        self.min_std = float(min_std)
        self.moments = RunningMoments()

    def scale(self, scores, all_reduce_sum=None):
        self.moments.update(*_batch_moments(scores, all_reduce_sum))
        shifted = scores - self.moments.mean if self.center else scores
        return shifted / max(self.moments.std, self.min_std)

    def state_dict(self):
        return self.moments.state_dict()

    def load_state_dict(self, state):
        self.moments.load_state_dict(state)

    def metrics(self):
        return {"reward_scaling/mean": self.moments.mean, "reward_scaling/std": self.moments.std}


@register_plugin
class RunningStdScaling(RunningMeanStdScaling):
    """score / running std: scale only, the sign and offset of the scores are kept."""

    name = "running_std"
    center = False
