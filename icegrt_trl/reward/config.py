"""`RewardConfig`: TRL's reward config plus label smoothing, loss plugins (GRM) and bad-input policies."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import RewardConfig as _TRLRewardConfig

from .losses import grm_regularizers

_POLICIES = {
    "identical_pairs": ("drop", "error"),
    "empty_completions": ("error", "drop"),
    "over_length": ("drop", "truncate", "error"),
}


@dataclass
class RewardConfig(_TRLRewardConfig):
    r"""Configuration of icegrt-trl's [`RewardTrainer`]: every field of `trl.RewardConfig` (same meaning, same
    defaults, so with none of the fields below switched on training is exactly TRL's), plus:

    Parameters:
        label_smoothing (`float`, defaults to `0.0`):
            Share ε of pairs assumed mislabeled: L = −(1−ε)·log σ(d) − ε·log σ(−d), d = r_c − r_r − margin.
            Worth setting to the known label-noise rate of the data (the testbed's `preferences` split: 0.2).
        loss_plugins (`list[str]`, defaults to `[]`):
            Names of extra-loss plugins (kind ``"reward_loss"``, see `icegrt_trl.plugins.available_plugins`);
            instances can also be passed to the trainer's `loss_plugins` argument.
        grm_regularizer (`str` or `None`, defaults to `None`):
            GRM text-generation regularizer on the shared hidden states: ``"sft"``, ``"dpo"`` or ``"dpo_noref"``
            (Yang et al. 2024). Needs a reward model that keeps its LM head (`GRMRewardModel`). Shorthand for the
            ``"grm"`` loss plugin.
        grm_alpha (`float`, defaults to `0.01`):
            Weight α in L = (1 − α)·L_BT + α·L_reg; must lie in [0, 1].
        grm_beta (`float`, defaults to `0.1`):
            β inside the regularizer's log σ(β·…).
        identical_pairs (`str`, defaults to `"drop"`):
            Rows whose chosen equals rejected carry no preference: ``"drop"`` (counted in
            `trainer.data_report`) or ``"error"``.
        empty_completions (`str`, defaults to `"error"`):
            Rows with an empty chosen or rejected completion: ``"error"`` or ``"drop"`` (counted).
        over_length (`str`, defaults to `"drop"`):
            Rows longer than `max_length` tokens: ``"drop"`` (TRL's behaviour, now counted), ``"truncate"`` (keep the
            *last* `max_length` tokens: the reward is read at the final token, so the end must survive; the prompt
            is cut first) or ``"error"``.
    """

    # ---------------------------------------------------------------- loss
    label_smoothing: float = field(default=0.0, metadata={
        "help": "Share ε of pairs assumed mislabeled: L = −(1−ε)·log σ(d) − ε·log σ(−d). Set it to the known "
                "label-noise rate of the data (the testbed's preference split: 0.2); must lie in [0, 0.5)."})
    loss_plugins: list[str] = field(default_factory=list, metadata={
        "help": "Names of extra-loss plugins (kind 'reward_loss', e.g. 'grm'), each built from this config; "
                "instances go to RewardTrainer(loss_plugins=...). A plugin may be named once."})
    grm_regularizer: str | None = field(default=None, metadata={
        "help": "GRM (Yang et al. 2024) text-generation regularizer on the reward model's hidden states: 'sft', "
                "'dpo' (reference = adapters off under LoRA, else a frozen copy) or 'dpo_noref'. Needs a reward "
                "model that keeps its LM head (GRMRewardModel; the reward stage builds one). Shorthand for "
                "loss_plugins=['grm']."})
    grm_alpha: float = field(default=0.01, metadata={
        "help": "GRM weight α in L = (1 − α)·L_BT + α·L_reg (GRM's default 0.01; larger α regularizes more); "
                "in [0, 1]."})
    grm_beta: float = field(default=0.1, metadata={"help": "GRM β inside the regularizer's log σ(β·…) (GRM: 0.1)."})
    # ---------------------------------------------------------------- bad rows
    identical_pairs: str = field(default="drop", metadata={
        "help": "Rows whose chosen equals rejected carry no preference: 'drop' (counted in trainer.data_report and "
                "the model card) or 'error'."})
    empty_completions: str = field(default="error", metadata={
        "help": "Rows with an empty chosen or rejected completion: 'error' (default) or 'drop' (counted)."})
    over_length: str = field(default="drop", metadata={
        "help": "Rows longer than max_length tokens: 'drop' (TRL's behaviour, now counted), 'truncate' (keep the "
                "last max_length tokens: the reward is read at the final token; the prompt is cut first) or 'error'."})

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing={self.label_smoothing} must lie in [0, 0.5).")
        if self.grm_regularizer in ("", "none", "None"):
            self.grm_regularizer = None
        if self.grm_regularizer is not None and self.grm_regularizer not in grm_regularizers():
            raise ValueError(f"grm_regularizer={self.grm_regularizer!r} must be None or one of {grm_regularizers()}.")
        if not 0.0 <= self.grm_alpha <= 1.0:
            raise ValueError(f"grm_alpha={self.grm_alpha} must lie in [0, 1].")
        if self.grm_beta <= 0:
            raise ValueError(f"grm_beta={self.grm_beta} must be > 0.")
        for name, allowed in _POLICIES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} must be one of {allowed}.")
        if isinstance(self.loss_plugins, str):
            self.loss_plugins = [p.strip() for p in self.loss_plugins.split(",") if p.strip()]


__all__ = ["RewardConfig"]
