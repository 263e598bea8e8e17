"""PPO with a critic on current TRL: config, trainer, math (``core``), plugins, reward adapters."""

from . import plugins  # registers the built-in plugins
from .config import PPOConfig
from .plugins import PPOHook
from .trainer import PPOTrainer

__all__ = ["PPOConfig", "PPOHook", "PPOTrainer", "plugins"]
