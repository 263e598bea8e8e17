"""Base class of PPO plugins: a kind, a name, a state that goes into every Trainer checkpoint, and metrics."""

from __future__ import annotations

from typing import Any


class PPOPlugin:
    """One concern of the PPO loop. Subclasses set ``kind``/``name`` and override what they need.

    ``state_dict``/``load_state_dict`` hold only JSON-serialisable values; the trainer writes them to
    ``icegrt_ppo_state.json`` in each checkpoint and restores them on ``resume_from_checkpoint``.
    """

    kind: str = ""
    name: str = ""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def metrics(self) -> dict[str, float]:
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.state_dict()})"
