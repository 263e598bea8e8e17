"""User hooks: attach behaviour to the PPO loop without copying it.

Subclass :class:`PPOHook`, override the methods you need and pass instances in ``PPOTrainer(plugins=[...])``.
Every hook receives the rollout batch (a dict of tensors and lists) and the trainer, and may modify the batch in
place or return a new dict (returning ``None`` keeps it). Order of calls for one rollout:

``on_rollout`` (after generation: ``completions``, ``responses``, ``response_mask``) →
``on_scores`` (``scores``, before scaling) → ``on_rewards`` (token-level ``rewards`` after KL shaping) →
``on_advantages`` (``advantages``, ``returns``) → ``on_kl_update`` (``kl_coef`` just updated) →
``on_ppo_epoch_end`` (after each pass over the rollout; the batch holds the epoch's training data).
"""

from __future__ import annotations

from .base import PPOPlugin

HOOK_NAMES = ("on_rollout", "on_scores", "on_rewards", "on_advantages", "on_kl_update", "on_ppo_epoch_end")


class PPOHook(PPOPlugin):
    kind = "hook"
    name = "hook"

    def on_rollout(self, batch: dict, trainer) -> dict | None: ...
    def on_scores(self, batch: dict, trainer) -> dict | None: ...
    def on_rewards(self, batch: dict, trainer) -> dict | None: ...
    def on_advantages(self, batch: dict, trainer) -> dict | None: ...
    def on_kl_update(self, batch: dict, trainer) -> dict | None: ...
    def on_ppo_epoch_end(self, batch: dict, trainer) -> dict | None: ...


def run_hooks(hooks: list, name: str, batch: dict, trainer) -> dict:
    for hook in hooks:
        fn = getattr(hook, name, None)
        if fn is not None:
            out = fn(batch, trainer)
            if out is not None:
                batch = out
    return batch
