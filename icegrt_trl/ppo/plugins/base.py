"""Base class of PPO plugins: :class:`icegrt_trl.plugins.Plugin` with JSON-serialisable state."""

from __future__ import annotations

from ...plugins.base import Plugin


class PPOPlugin(Plugin):
    """One concern of the PPO loop. Subclasses set ``kind``/``name`` and override what they need.

    ``state_dict``/``load_state_dict`` hold only JSON-serialisable values; the trainer writes them to
    ``icegrt_ppo_state.json`` in each checkpoint and restores them on ``resume_from_checkpoint``.
    """

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.state_dict()})"
