"""Reward modelling: TRL's RewardTrainer with label smoothing, loss plugins (GRM) and evaluation."""

from .config import RewardConfig
from .modeling import GRMConfig, GRMRewardModel, HeadTypeMismatchError
from .plugins import GRMRegularizer, PluginLoss, RewardLossContext, RewardLossPlugin
from .trainer import RewardTrainer

__all__ = ["GRMConfig", "GRMRegularizer", "GRMRewardModel", "HeadTypeMismatchError", "PluginLoss", "RewardConfig",
           "RewardLossContext", "RewardLossPlugin", "RewardTrainer"]
