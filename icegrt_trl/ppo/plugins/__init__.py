"""PPO plugins, one concern per module; importing this package registers the built-in ones."""

from .advantage import AdvantageNormalizer, GroupAdvantages, NoAdvantageNormalization, WhitenAdvantages
from .base import PPOPlugin
from .hooks import HOOK_NAMES, PPOHook, run_hooks
from .kl_control import AdaptiveKLController, FixedKLController, KLController
from .ptx import PtxLoss
from .reward_scaling import (FixedRewardScaling, NoRewardScaling, RewardScaler, RunningMeanStdScaling,
                             RunningMoments, RunningStdScaling)
from .warmup import ValueWarmup

__all__ = [
    "AdaptiveKLController", "AdvantageNormalizer", "FixedKLController", "FixedRewardScaling", "GroupAdvantages",
    "HOOK_NAMES", "KLController", "NoAdvantageNormalization", "NoRewardScaling", "PPOHook", "PPOPlugin", "PtxLoss",
    "RewardScaler", "RunningMeanStdScaling", "RunningMoments", "RunningStdScaling", "ValueWarmup",
    "WhitenAdvantages", "run_hooks",
]
