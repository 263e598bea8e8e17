"""PPO math as small pure functions (CleanRL/verl style), each unit-tested against hand-computed values.

Conventions: tensors are ``[batch, response_len]``; ``mask`` is 1 on real response tokens (up to and including the
stop token) and 0 on padding. Functions that need statistics over *all processes* take an optional
``all_reduce_sum`` callable (sum of a tensor over processes); without it they are per-process, as trl 1.12 was.

As in verl's ``core_algos.py``, the interchangeable pieces are registered functions (in the one plugin registry,
so entry points can add more), chosen by name in ``PPOConfig``:

* ``kl_estimator``: ``fn(logprobs, ref_logprobs) -> per-token KL``;
* ``advantage_estimator``: ``fn(rewards, values, mask, gamma=, lam=) -> (advantages, returns)``;
* ``policy_loss_type``: ``fn(logprobs, old_logprobs, advantages, mask, cliprange=) -> (loss, metrics)``;
* ``value_loss_type``: ``fn(values, old_values, returns, mask, cliprange_value=) -> (loss, metrics)``.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..plugins.registry import PluginRegistryError, register_plugin, registered

AllReduce = Callable[[torch.Tensor], torch.Tensor] | None


# ---------------------------------------------------------------- masked statistics
def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    return (values * mask).sum() if dim is None else (values * mask).sum(dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean over positions where ``mask`` is 1 (0 when the mask is empty, never NaN)."""
    mask = mask.to(values.dtype)
    if dim is None:
        return masked_sum(values, mask) / mask.sum().clamp(min=1)
    return masked_sum(values, mask, dim) / mask.sum(dim).clamp(min=1)


def masked_moments(values: torch.Tensor, mask: torch.Tensor, all_reduce_sum: AllReduce = None,
                   unbiased: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, variance, count) of the masked entries, optionally over all processes.

    Sums (count, Σx, Σx²) are all-reduced in one call, so every process gets the same statistics.
    """
    mask = mask.to(values.dtype)
    stats = torch.stack([mask.sum(), (values * mask).sum(), (values.square() * mask).sum()]).double()
    if all_reduce_sum is not None:
        stats = all_reduce_sum(stats)
    n, s, ss = stats[0], stats[1], stats[2]
    mean = s / n.clamp(min=1)
    var = (ss / n.clamp(min=1) - mean.square()).clamp(min=0)
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return mean.to(values.dtype), var.to(values.dtype), n


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8,
                  all_reduce_sum: AllReduce = None) -> torch.Tensor:
    """(x − mean)/std over masked entries (mean kept when ``shift_mean=False``); padding is set to 0."""
    mean, var, _ = masked_moments(values, mask, all_reduce_sum)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(values.dtype)


def group_whiten(values: torch.Tensor, mask: torch.Tensor, group_size: int, eps: float = 1e-8) -> torch.Tensor:
    """Whiten within consecutive groups of ``group_size`` rows (the samples of one prompt).

    A group whose samples are all alike (std 0) gets zero advantages rather than a division blow-up.
    """
    b, t = values.shape
    if b % group_size:
        raise ValueError(f"Batch of {b} rows does not split into groups of {group_size}.")
    v = values.reshape(b // group_size, group_size * t)
    m = mask.reshape(b // group_size, group_size * t).to(values.dtype)
    n = m.sum(1, keepdim=True).clamp(min=1)
    mean = (v * m).sum(1, keepdim=True) / n
    var = ((v - mean).square() * m).sum(1, keepdim=True) / (n - 1).clamp(min=1)
    out = (v - mean) * torch.rsqrt(var + eps) * m
    return out.reshape(b, t)


# ---------------------------------------------------------------- registries of interchangeable functions
def _registrar(kind: str):
    def register(name: str):
        def wrap(fn):
            return register_plugin(fn, kind=kind, name=name)

        return wrap

    register.__doc__ = f"Decorator: register a function as the {kind} ``name`` (see the module docstring)."
    return register


register_kl_estimator = _registrar("kl_estimator")
register_advantage_estimator = _registrar("advantage_estimator")
register_policy_loss = _registrar("policy_loss")
register_value_loss = _registrar("value_loss")


def lookup(kind: str, name: str) -> Callable:
    """The registered function, or a ValueError naming the choices (config validation calls this early)."""
    try:
        return registered(kind, name)
    except PluginRegistryError as err:
        raise ValueError(str(err)) from None


# ---------------------------------------------------------------- KL estimators (Schulman, "Approximating KL")

@register_kl_estimator("k1")
def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 = −log r = log π − log π_ref: unbiased, high variance, can be negative per token."""
    return logprobs - ref_logprobs


@register_kl_estimator("k2")
def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k2 = ½ (log r)²: biased, low variance, always ≥ 0."""
    return 0.5 * (ref_logprobs - logprobs).square()


@register_kl_estimator("k3")
def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 = (r − 1) − log r: unbiased and always ≥ 0."""
    logr = ref_logprobs - logprobs
    return torch.expm1(logr) - logr


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    return lookup("kl_estimator", estimator)(logprobs, ref_logprobs)


# ---------------------------------------------------------------- rewards, returns, advantages
def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row (0 for an empty row)."""
    idx = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return (idx * mask.long()).amax(1)


def token_level_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> tuple[
        torch.Tensor, torch.Tensor]:
    """r_t = −β·KL_t, plus the sequence score on the last real token (Ziegler et al. 2019).

    Returns (rewards, non_score_rewards), both zero on padding.
    """
    mask = mask.to(kl.dtype)
    non_score = -kl_coef * kl * mask
    rewards = non_score.clone()
    rows = torch.arange(scores.shape[0], device=scores.device)
    rewards[rows, last_token_index(mask)] += scores.to(rewards.dtype)
    return rewards, non_score


@register_advantage_estimator("gae")
def compute_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
                lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016).

    δ_t = r_t + γ V_{t+1} − V_t,  A_t = δ_t + γλ A_{t+1}; the value after the last real token is 0.
    Returns (advantages, returns = advantages + values), zero on padding.
    """
    mask = mask.to(values.dtype)
    values, rewards = values * mask, rewards * mask
    last = torch.zeros_like(values[:, 0])
    out = torch.zeros_like(values)
    for t in reversed(range(values.shape[1])):
        next_v = values[:, t + 1] if t + 1 < values.shape[1] else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        out[:, t] = last
    return out, (out + values) * mask


# ---------------------------------------------------------------- losses
@register_policy_loss("ppo_clip")
def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, cliprange: float = 0.2) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate (Schulman et al. 2017): mean over tokens of max(−A·ρ, −A·clip(ρ, 1±ε)).

    Stats: clipfrac (share of tokens where the clip is active), approxkl (½·mean (log ρ)²), ratio (mean ρ).
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    loss1 = -advantages * ratio
    loss2 = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(loss1, loss2), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((loss2 > loss1).to(loss.dtype), mask),
            "approxkl": 0.5 * masked_mean(log_ratio.square(), mask),
            "ratio": masked_mean(ratio, mask),
        }
    return loss, stats


ENGINE_IS_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


def engine_importance_weights(logprobs: torch.Tensor, engine_logprobs: torch.Tensor, mask: torch.Tensor,
                              mode: str = "token_truncate", clip_min: float | None = None,
                              clip_max: float | None = 3.0) -> torch.Tensor:
    """Importance weights π_trainer / π_engine for samples drawn by an inference engine (vLLM) whose log-probs are
    not the trainer's (GRPO's ``vllm_importance_sampling_mode``): per token, or one per sequence from the summed
    log-ratio; ``*_truncate`` clamps them to [clip_min, clip_max], ``*_mask`` sets those outside to 0. Padding gets
    a log-ratio of 0 (weight 1 before masking by the loss)."""
    if mode not in ENGINE_IS_MODES:
        raise ValueError(f"vllm_importance_sampling_mode={mode!r}: use one of {', '.join(ENGINE_IS_MODES)}.")
    diff = (logprobs - engine_logprobs) * mask
    if mode.startswith("sequence"):
        diff = diff.sum(-1, keepdim=True)
    ratio = torch.exp(diff)
    if mode.endswith("truncate"):
        ratio = torch.clamp(ratio, min=clip_min, max=clip_max)
    else:
        lo = -float("inf") if clip_min is None else clip_min
        hi = float("inf") if clip_max is None else clip_max
        ratio = ratio.masked_fill((ratio < lo) | (ratio > hi), 0.0)
    return ratio.expand_as(logprobs)


@register_value_loss("clipped_mse")
def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               cliprange_value: float | None = 0.2) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """½·mean max((V − R)², (clip(V, V_old ± ε_v) − R)²); ``cliprange_value=None`` disables the clip."""
    loss1 = (values - returns).square()
    if cliprange_value is None:
        loss = 0.5 * masked_mean(loss1, mask)
        return loss, {"clipfrac": torch.zeros((), device=values.device)}
    clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    loss2 = (clipped - returns).square()
    loss = 0.5 * masked_mean(torch.max(loss1, loss2), mask)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean((loss2 > loss1).to(loss.dtype), mask)}
    return loss, stats


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                       all_reduce_sum: AllReduce = None) -> torch.Tensor:
    """1 − Var[R − V] / Var[R] over the masked tokens: 1 for a perfect critic, 0 for one no better than a constant,
    negative for a worse one (0 when the returns do not vary)."""
    _, var_returns, _ = masked_moments(returns.double(), mask, all_reduce_sum, unbiased=False)
    _, var_residual, _ = masked_moments((returns - values).double(), mask, all_reduce_sum, unbiased=False)
    if var_returns <= 0:
        return torch.zeros((), dtype=torch.float64, device=values.device)
    return 1.0 - var_residual / var_returns


# ---------------------------------------------------------------- response post-processing
def first_true_indices(bools: torch.Tensor) -> torch.Tensor:
    """Index of the first True in each row, or the row length when there is none."""
    row_len = bools.size(-1)
    idx = torch.arange(row_len, device=bools.device)
    return torch.where(bools, idx, row_len).amin(-1)


def truncate_at_stop(responses: torch.Tensor, stop_token_ids: list[int], pad_token_id: int) -> tuple[
        torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cut each response after its first stop token (kept), pad the rest.

    Returns (responses, mask, ended) where ``ended`` says whether a stop token was produced. A row without a stop
    token runs to the full length: generation pads only rows that have stopped, so a pad token inside such a row was
    sampled by the policy (possible when pad ≠ stop) and is part of the response.
    """
    is_stop = torch.zeros_like(responses, dtype=torch.bool)
    for s in stop_token_ids:
        is_stop |= responses == s
    stop_at = first_true_indices(is_stop)
    ended = stop_at < responses.shape[1]
    length = torch.where(ended, stop_at + 1, responses.shape[1])
    idx = torch.arange(responses.shape[1], device=responses.device).expand_as(responses)
    mask = idx < length.unsqueeze(1)
    return torch.where(mask, responses, pad_token_id), mask.long(), ended
