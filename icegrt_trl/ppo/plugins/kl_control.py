"""KL controllers (ICE-GRT's KL-control): the β of r_t = −β·KL_t, fixed or adaptive (Ziegler et al. 2019)."""

from __future__ import annotations

from ...plugins.registry import register_plugin
from .base import PPOPlugin


class KLController(PPOPlugin):
    kind = "kl_controller"

    def __init__(self, init_kl_coef: float = 0.05, **_):
        self.value = float(init_kl_coef)

    @classmethod
    def from_config(cls, config=None, **overrides):
        kw = {"init_kl_coef": config.kl_coef, "target": config.kl_target, "horizon": config.kl_horizon} \
            if config is not None else {}
        return cls(**{**kw, **overrides})

    def update(self, current_kl: float, n_steps: int) -> float:
        """Called once per rollout with the mean (all-process) sequence KL and the global batch size."""
        return self.value

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = float(state["value"])

    def metrics(self):
        return {"objective/kl_coef": self.value}


@register_plugin
class FixedKLController(KLController):
    name = "fixed"


@register_plugin
class AdaptiveKLController(KLController):
    """e = clip(KL/target − 1, −0.2, 0.2);  β ← β·(1 + e·n/horizon)  (Ziegler et al. 2019, §2.2)."""

    name = "adaptive"

    def __init__(self, init_kl_coef: float = 0.05, target: float = 6.0, horizon: int = 10000, **kw):
        super().__init__(init_kl_coef)
        if target <= 0 or horizon <= 0:
            raise ValueError("Adaptive KL needs kl_target > 0 and kl_horizon > 0.")
        self.target, self.horizon = float(target), int(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value
