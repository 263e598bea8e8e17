"""Stages of the RLHF recipe. Each lives in its own module, imported only when it runs.

A stage whose module has not landed yet is listed with the issue that brings it, so the CLI can say so.
"""

from __future__ import annotations

import importlib

from .base import DataArguments, RunContext, Stage, StageNotAvailable

# name -> (module, class, what brings it when missing)
STAGE_REGISTRY: dict[str, tuple[str, str, str]] = {
    "sft": ("icegrt_trl.stages.sft", "SFTStage", ""),
    "reward": ("icegrt_trl.stages.reward", "RewardStage", "the reward-model issue (#4)"),
    "reward_pmp": ("icegrt_trl.stages.reward", "RewardPMPStage", "the reward-model issue (#4)"),
    "ppo": ("icegrt_trl.stages.ppo", "PPOStage", "the PPOTrainer issue (#3)"),
    "rlp": ("icegrt_trl.stages.rlp", "RLPStage", "the RLP issue (reward learning on policy)"),
    "eval": ("icegrt_trl.stages.evaluate", "EvalStage", ""),
}


def get_stage(name: str) -> Stage:
    if name not in STAGE_REGISTRY:
        raise StageNotAvailable(f"Unknown stage {name!r}. Stages: {sorted(STAGE_REGISTRY)}.")
    module_name, class_name, brought_by = STAGE_REGISTRY[name]
    try:
        module = importlib.import_module(module_name)
        cls = getattr(module, class_name)
    except (ModuleNotFoundError, AttributeError) as err:
        if isinstance(err, ModuleNotFoundError) and err.name != module_name:
            raise  # a real missing dependency inside the stage module, not a missing stage
        raise StageNotAvailable(
            f"The '{name}' stage is not available yet in icegrt-trl {_version()}: it comes with {brought_by}."
        ) from None
    return cls()


def _version() -> str:
    from .. import __version__

    return __version__


__all__ = ["DataArguments", "RunContext", "STAGE_REGISTRY", "Stage", "StageNotAvailable", "get_stage"]
