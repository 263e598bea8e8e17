"""Stages of the RLHF recipe. Each lives in its own module, imported only when it runs.

``STAGE_REGISTRY`` is the one list of stages: the CLI's commands, their help and the recipe validation come from
it. To add a stage, write a :class:`~icegrt_trl.stages.base.Stage` subclass and add one line here.
"""

from __future__ import annotations

import importlib

from .base import DataArguments, RunContext, Stage, StageNotAvailable

# name -> (module, class), in recipe order
STAGE_REGISTRY: dict[str, tuple[str, str]] = {
    "sft": ("icegrt_trl.stages.sft", "SFTStage"),
    "sample_preferences": ("icegrt_trl.stages.preferences", "SamplePreferencesStage"),
    "reward": ("icegrt_trl.stages.reward", "RewardStage"),
    "reward_pmp": ("icegrt_trl.stages.reward", "RewardPMPStage"),
    "ppo": ("icegrt_trl.stages.ppo", "PPOStage"),
    "rlp": ("icegrt_trl.stages.rlp", "RLPStage"),
    "eval": ("icegrt_trl.stages.evaluate", "EvalStage"),
}


def get_stage(name: str) -> Stage:
    if name not in STAGE_REGISTRY:
        raise StageNotAvailable(f"Unknown stage {name!r}. Stages: {list(STAGE_REGISTRY)}.")
    module_name, class_name = STAGE_REGISTRY[name]
    return getattr(importlib.import_module(module_name), class_name)()


__all__ = ["DataArguments", "RunContext", "STAGE_REGISTRY", "Stage", "StageNotAvailable", "get_stage"]
