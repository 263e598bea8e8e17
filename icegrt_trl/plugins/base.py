"""The one plugin contract of both trainers.

A plugin has a ``kind`` (the hook family it serves: ``"reward_scaling"``, ``"kl_controller"``,
``"advantage_normalization"``, ``"value_warmup"``, ``"ptx"``, ``"hook"`` for PPO; ``"reward_loss"`` for the reward
trainer) and a ``name`` (its registry key). It is built from the trainer's config by ``from_config`` — so a plugin
named in a config reads its settings from that same config (``RewardConfig(loss_plugins=["grm"], grm_alpha=0.3)``
gives α = 0.3) — and carries a state that goes into every checkpoint (``state_dict``/``load_state_dict``) and
metrics that go to the logs (``metrics``).

PPO plugins hold plain values (saved as JSON in ``icegrt_ppo_state.json``); reward-loss plugins are also
``nn.Module``s whose tensors train with the reward model (saved with ``torch.save``). Pure functions — KL estimators,
GRM regularizers — live in function registries next to the math they belong to (``icegrt_trl.ppo.core``,
``icegrt_trl.reward.losses``).
"""

from __future__ import annotations

from typing import Any


class Plugin:
    kind: str = ""
    name: str = ""

    @classmethod
    def from_config(cls, config: Any = None, **overrides) -> "Plugin":
        """Build the plugin from a trainer config (``PPOConfig``/``RewardConfig``); ``overrides`` win."""
        return cls(**overrides)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def metrics(self) -> dict[str, float]:
        """Values to log (current state, e.g. the KL coefficient); losses report theirs with each step."""
        return {}
