"""icegrt-trl: PPO-based RLHF on current TRL with the ICE-GRT, Qwen, GRM and RLP training tricks."""

__version__ = "0.1.0"

# Public names imported lazily (importing icegrt_trl stays cheap): name -> module. Extend this table.
_LAZY_EXPORTS = {
    "RewardConfig": "icegrt_trl.reward",
    "RewardTrainer": "icegrt_trl.reward",
    "GRMRewardModel": "icegrt_trl.reward",
    "GRMConfig": "icegrt_trl.reward",
    "evaluate_reward_model": "icegrt_trl.reward.evaluation",
    "PPOConfig": "icegrt_trl.ppo",
    "PPOTrainer": "icegrt_trl.ppo",
    "PPOHook": "icegrt_trl.ppo",
}


def __getattr__(name):
    if name in _LAZY_EXPORTS:
        import importlib

        return getattr(importlib.import_module(_LAZY_EXPORTS[name]), name)
    raise AttributeError(f"module 'icegrt_trl' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY_EXPORTS))
