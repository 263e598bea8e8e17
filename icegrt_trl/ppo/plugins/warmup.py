"""Value warm-up (Qwen §3.2): the first N optimizer steps train the value model only, policy frozen.

A freshly initialised value head gives noisy advantages; fitting it first keeps early policy updates sane.
"""

from __future__ import annotations

from ...plugins.registry import register_plugin
from .base import PPOPlugin


@register_plugin
class ValueWarmup(PPOPlugin):
    kind = "value_warmup"
    name = "steps"

    def __init__(self, steps: int = 0, **_):
        if steps < 0:
            raise ValueError(f"value_warmup_steps must be >= 0, got {steps}.")
        self.steps, self.done = int(steps), 0

    @classmethod
    def from_config(cls, config=None, **overrides):
        return cls(**{**({"steps": config.value_warmup_steps} if config is not None else {}), **overrides})

    @property
    def active(self) -> bool:
        """True while the policy is frozen."""
        return self.done < self.steps

    def step(self) -> None:
        """Called after each optimizer step; counts up to ``steps``."""
        self.done = min(self.done + 1, self.steps)

    def state_dict(self):
        return {"steps": self.steps, "done": self.done}

    def load_state_dict(self, state):
        self.steps, self.done = int(state["steps"]), int(state["done"])

    def metrics(self):
        return {"value_warmup/active": float(self.active)}
