"""Reward-model losses as small pure functions (tensors in, scalar tensor out).

Conventions: ``rewards_chosen``/``rewards_rejected`` have shape ``(B,)``; log-probabilities are *summed* over
response tokens (GRM's choice: a sequence-level log-likelihood, not a per-token mean), with prompt and padding
tokens masked out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..plugins.registry import available_plugins, register_plugin, registered


def bradley_terry_loss(
    rewards_chosen: torch.Tensor,
    rewards_rejected: torch.Tensor,
    margin: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """−mean log σ(r_c − r_r − m), optionally label-smoothed.

    With ``label_smoothing = ε`` the pair's label is treated as correct with probability 1 − ε (as in cDPO), which
    is the maximum-likelihood loss when a share ε of the labels is flipped:
    ``−(1−ε)·log σ(d) − ε·log σ(−d)``. With ε = 0 the operations are exactly TRL's, so results match bit for bit.
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing={label_smoothing} must lie in [0, 0.5).")
    diff = rewards_chosen - rewards_rejected
    if margin is not None:
        diff = diff - margin
    if label_smoothing == 0.0:
        return -F.logsigmoid(diff).mean()
    return (-(1.0 - label_smoothing) * F.logsigmoid(diff) - label_smoothing * F.logsigmoid(-diff)).mean()


def center_rewards_penalty(rewards_chosen: torch.Tensor, rewards_rejected: torch.Tensor) -> torch.Tensor:
    """mean((r_c + r_r)²): pushes rewards towards mean zero (Eisenstein et al. 2023, Eq. 2; TRL's form)."""
    return torch.mean((rewards_chosen + rewards_rejected) ** 2)


def sequence_logps(logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """Σ_t log π(x_t | x_<t) over the tokens where ``completion_mask`` is 1 (response tokens), shape ``(B,)``.

    ``logits`` (B, L, V) are next-token logits at every position (logit t predicts token t+1), so token t is scored
    by logit t−1; the first token can never be scored. Summation (not mean) follows GRM's ``get_batch_logps``.
    """
    if logits.shape[:2] != input_ids.shape or completion_mask.shape != input_ids.shape:
        raise ValueError(
            f"sequence_logps: logits {tuple(logits.shape)}, input_ids {tuple(input_ids.shape)} and completion_mask "
            f"{tuple(completion_mask.shape)} must agree on (batch, length)."
        )
    targets = input_ids[:, 1:]
    mask = completion_mask[:, 1:].to(logits.dtype)
    logps = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    token_logps = torch.gather(logps, 2, targets.unsqueeze(-1)).squeeze(-1)
    return (token_logps * mask).sum(-1)


def grm_sft_loss(logps_chosen: torch.Tensor, beta: float) -> torch.Tensor:
    """GRM-SFT: −mean log σ(β·log π(y_c|x)); for very negative log π this is ≈ β·NLL of the chosen response."""
    return -F.logsigmoid(beta * logps_chosen).mean()


def grm_dpo_noref_loss(logps_chosen: torch.Tensor, logps_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """GRM-DPO without reference: −mean log σ(β·(log π(y_c|x) − log π(y_r|x)))."""
    return -F.logsigmoid(beta * (logps_chosen - logps_rejected)).mean()


def grm_dpo_loss(
    logps_chosen: torch.Tensor,
    logps_rejected: torch.Tensor,
    ref_logps_chosen: torch.Tensor,
    ref_logps_rejected: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """GRM-DPO: −mean log σ(β·[(log π(y_c) − log π(y_r)) − (log π_ref(y_c) − log π_ref(y_r))])."""
    return -F.logsigmoid(beta * ((logps_chosen - logps_rejected) - (ref_logps_chosen - ref_logps_rejected))).mean()


# GRM regularizers: registered functions ``fn(logps_chosen, logps_rejected, beta, ref_chosen, ref_rejected) ->
# (loss, metrics)`` in the one plugin registry (kind "grm_regularizer"), chosen by RewardConfig.grm_regularizer.
def register_grm_regularizer(name: str):
    return lambda fn: register_plugin(fn, kind="grm_regularizer", name=name)


@register_grm_regularizer("sft")
def _grm_sft(logps_chosen, logps_rejected, beta, ref_chosen=None, ref_rejected=None):
    return grm_sft_loss(logps_chosen, beta), {}


@register_grm_regularizer("dpo_noref")
def _grm_dpo_noref(logps_chosen, logps_rejected, beta, ref_chosen=None, ref_rejected=None):
    return grm_dpo_noref_loss(logps_chosen, logps_rejected, beta), {}


@register_grm_regularizer("dpo")
def _grm_dpo(logps_chosen, logps_rejected, beta, ref_chosen=None, ref_rejected=None):
    if ref_chosen is None or ref_rejected is None:
        raise ValueError("The 'dpo' GRM regularizer needs reference log-probabilities.")
    return grm_dpo_loss(logps_chosen, logps_rejected, ref_chosen, ref_rejected, beta), {}


def grm_regularizers() -> list[str]:
    return available_plugins("grm_regularizer")


def grm_regularizer_loss(
    kind: str,
    logps_chosen: torch.Tensor,
    logps_rejected: torch.Tensor | None,
    beta: float,
    ref_logps_chosen: torch.Tensor | None = None,
    ref_logps_rejected: torch.Tensor | None = None,
) -> torch.Tensor:
    """The registered regularizer ``kind``'s loss (``"sft"``, ``"dpo"``, ``"dpo_noref"`` or a user's)."""
    if kind not in grm_regularizers():
        raise ValueError(f"Unknown GRM regularizer {kind!r}; choose one of {grm_regularizers()}.")
    loss, _ = registered("grm_regularizer", kind)(logps_chosen, logps_rejected, beta, ref_logps_chosen,
                                                  ref_logps_rejected)
    return loss


__all__ = [
    "bradley_terry_loss", "grm_regularizers", "register_grm_regularizer", "center_rewards_penalty", "grm_dpo_loss", "grm_dpo_noref_loss",
    "grm_regularizer_loss", "grm_sft_loss", "sequence_logps",
]
