"""Extra losses of the reward trainer, as plugins of kind ``"reward_loss"``.

The hook contract (all optional except `compute_loss`), chosen so that both GRM (a regularizer on the same
forward pass) and RLP's UML (an auxiliary loss with its own parameters, fed by a second, unlabeled dataset of
policy samples) fit without touching the trainer:

* ``setup(trainer)`` — once, after the model is built/PEFT-wrapped: validate the model, build references, move
  to the device. Raise here on misuse, so errors come before training starts.
* ``forward_kwargs(trainer, mode)`` — extra keyword arguments for the shared forward pass of the pair batch
  (GRM asks for ``return_lm_logits=True``; UML would ask for ``output_hidden_states=True``).
* ``signature_columns`` — extra dataset columns the plugin needs in its batch (kept by the trainer).
* ``extra_dataset(trainer)`` / ``extra_collator(trainer)`` — a second dataset the trainer cycles through in
  training, one batch per step, handed over as ``ctx.extra_batch``.
* ``compute_loss(ctx) -> PluginLoss`` — ``loss`` is *added* to the total and ``base_weight`` multiplies the
  Bradley–Terry term: total = (Π base_weight)·L_BT + Σ loss. GRM returns ``base_weight = 1 − α``, ``loss = α·L_reg``.
* The plugin is an ``nn.Module``: its parameters (if any) join the optimizer, and its ``state_dict`` is saved next
  to every checkpoint (``reward_loss_plugins.pt``) and restored on resume.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..plugins.base import Plugin
from ..plugins.registry import register_plugin
from .losses import grm_regularizer_loss, grm_regularizers, sequence_logps


@dataclass
class RewardLossContext:
    """What a plugin sees at each step. ``input_ids``/``attention_mask``: the pair batch, chosen rows first then
    rejected rows; ``completion_mask``: 1 on response tokens (prompt and padding 0); ``outputs``: the model's
    forward output on that batch; ``extra_batch``: the next batch of the plugin's own dataset (training only)."""

    trainer: Any
    model: nn.Module
    mode: str
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor | None
    outputs: Any
    rewards_chosen: torch.Tensor
    rewards_rejected: torch.Tensor
    batch: dict = field(default_factory=dict)
    extra_batch: dict | None = None


@dataclass
class PluginLoss:
    loss: torch.Tensor | float = 0.0
    base_weight: float = 1.0
    metrics: dict[str, float] = field(default_factory=dict)


class RewardLossPlugin(nn.Module, Plugin):
    """Base class of reward-trainer loss plugins (see the module docstring for the hooks). ``state_dict`` /
    ``load_state_dict`` are ``nn.Module``'s (tensors), ``from_config`` reads the plugin's settings from the
    ``RewardConfig``; per-step metrics come back in :class:`PluginLoss`."""

    kind = "reward_loss"
    name = "base"
    signature_columns: tuple[str, ...] = ()

    def setup(self, trainer) -> None:
        pass

    def forward_kwargs(self, trainer, mode: str) -> dict:
        return {}

    def extra_dataset(self, trainer):
        return None

    def extra_collator(self, trainer):
        return None

    def compute_loss(self, ctx: RewardLossContext) -> PluginLoss:
        raise NotImplementedError

    def describe(self) -> str:
        """One line for the model card."""
        return self.name


def unwrap_peft(model: nn.Module) -> nn.Module:
    """The model under a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@register_plugin
class GRMRegularizer(RewardLossPlugin):
    """GRM (Yang et al. 2024): L = (1 − α)·L_BT + α·L_reg, L_reg a text-generation loss through the kept LM head.

    ``dpo``'s reference is the base model as it was when training started: under PEFT the same weights with the
    adapter switched off (no second copy); otherwise a frozen copy of the LM made at setup.
    """

    name = "grm"

    def __init__(self, regularizer: str = "sft", alpha: float = 0.01, beta: float = 0.1):
        super().__init__()
        if regularizer not in grm_regularizers():
            raise ValueError(f"grm_regularizer={regularizer!r} must be one of {grm_regularizers()}.")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"grm_alpha={alpha} must lie in [0, 1].")
        self.regularizer, self.alpha, self.beta = regularizer, alpha, beta
        self._reference = None  # a plain attribute list, so the frozen copy is neither trained nor checkpointed
        self._use_adapter_off = False

    @classmethod
    def from_config(cls, config=None, **overrides):
        """From ``RewardConfig``: ``grm_regularizer`` (``"sft"`` when only ``loss_plugins=["grm"]`` names it),
        ``grm_alpha``, ``grm_beta``."""
        kw = {"regularizer": config.grm_regularizer or "sft", "alpha": config.grm_alpha, "beta": config.grm_beta} \
            if config is not None else {}
        return cls(**{**kw, **overrides})

    def describe(self) -> str:
        return f"grm(regularizer={self.regularizer}, alpha={self.alpha}, beta={self.beta})"

    def setup(self, trainer) -> None:
        from .modeling import GRMRewardModel

        base = unwrap_peft(trainer.model)
        if not isinstance(base, GRMRewardModel):
            raise ValueError(
                f"grm_regularizer={self.regularizer!r} needs a reward model that keeps its causal LM head, but the "
                f"model is a {type(base).__name__}, which has no LM head. Wrap a causal LM instead: "
                "GRMRewardModel.from_causal_lm(AutoModelForCausalLM.from_pretrained(...), head_type='mlp')."
            )
        if self.regularizer == "dpo":
            if hasattr(trainer.model, "disable_adapter"):
                self._use_adapter_off = True
            else:
                lm = copy.deepcopy(base.lm).eval().requires_grad_(False)
                self._reference = [lm]

    def forward_kwargs(self, trainer, mode: str) -> dict:
        return {"return_lm_logits": True}

    @torch.no_grad()
    def _reference_logits(self, ctx: RewardLossContext) -> torch.Tensor:
        position_ids = (ctx.attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        if self._use_adapter_off:
            model = ctx.trainer.accelerator.unwrap_model(ctx.model)
            with model.disable_adapter():
                return model(input_ids=ctx.input_ids, attention_mask=ctx.attention_mask, return_lm_logits=True,
                             use_cache=False).lm_logits
        lm = self._reference[0]
        return lm(input_ids=ctx.input_ids, attention_mask=ctx.attention_mask, position_ids=position_ids,
                  use_cache=False).logits

    def compute_loss(self, ctx: RewardLossContext) -> PluginLoss:
        if ctx.completion_mask is None:
            raise ValueError("The GRM regularizer needs the prompt/response boundary (`completion_mask`): use the "
                             "icegrt RewardTrainer's dataset preparation and collator.")
        lm_logits = getattr(ctx.outputs, "lm_logits", None)
        if lm_logits is None:
            raise ValueError("The model returned no `lm_logits`; GRM needs GRMRewardModel (LM head kept).")
        logps = sequence_logps(lm_logits, ctx.input_ids, ctx.completion_mask)
        lc, lr = torch.chunk(logps, 2)
        ref_c = ref_r = None
        metrics = {}
        if self.regularizer == "dpo":
            ref = sequence_logps(self._reference_logits(ctx), ctx.input_ids, ctx.completion_mask)
            ref_c, ref_r = torch.chunk(ref, 2)
            metrics["grm/ref_logps_chosen"] = ref_c.mean().item()
        reg = grm_regularizer_loss(self.regularizer, lc, lr, self.beta, ref_c, ref_r)
        metrics.update({"grm/reg_loss": reg.item(), "grm/logps_chosen": lc.mean().item(),
                        "grm/logps_rejected": lr.mean().item()})
        return PluginLoss(loss=self.alpha * reg, base_weight=1.0 - self.alpha, metrics=metrics)


__all__ = ["GRMRegularizer", "PluginLoss", "RewardLossContext", "RewardLossPlugin", "unwrap_peft"]
