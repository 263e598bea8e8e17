"""Pushing a stage's output folder to the Hugging Face Hub, exactly as the documented loaders read it.

``Trainer.push_to_hub`` re-saves the trainer's model before uploading, which for the reward stage would replace the
merged reward model by a bare adapter; the stages push their finished folder instead (weights, value head, tokenizer,
model card, evaluation files), without checkpoints.
"""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)

# never uploaded: resumable checkpoints and scratch folders (TensorBoard's runs/ is, as Trainer pushes it)
IGNORE_PATTERNS = ["checkpoints/*", "checkpoint-*", "_*", "*.pt"]


def push_folder(folder, args, commit_message: str = "icegrt-trl stage output") -> str:
    """Create (or reuse) the repo ``args.hub_model_id`` (default: the folder's name) and upload `folder` to it.

    Uses the Trainer's hub options: ``hub_model_id``, ``hub_token``, ``hub_private_repo``, ``hub_revision``.
    Returns the repo id.
    """
    from huggingface_hub import HfApi

    folder = Path(folder)
    warn_if_local_base(folder)
    api = HfApi(token=getattr(args, "hub_token", None))
    repo = api.create_repo(getattr(args, "hub_model_id", None) or folder.name,
                           private=getattr(args, "hub_private_repo", None), exist_ok=True)
    repo_id = getattr(repo, "repo_id", None) or str(repo).rstrip("/").split("/", 3)[-1]
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message,
                      ignore_patterns=IGNORE_PATTERNS, revision=getattr(args, "hub_revision", None))
    logger.info("Pushed %s to the Hub repo %s", folder, repo_id)
    return repo_id


def warn_if_local_base(folder: Path) -> None:
    """A pushed adapter names its base model; a local folder there cannot be found by whoever downloads it."""
    import json

    config = folder / "adapter_config.json"
    if not config.is_file():
        return
    base = json.loads(config.read_text()).get("base_model_name_or_path")
    if base and Path(base).exists():
        logger.warning(
            "The adapter in %s names the local folder %s as its base model; whoever downloads the pushed repo needs "
            "that base too. Push the base stage as well and pass it as base_model when loading (see docs/ppo.md), or "
            "set save_merged_model: true to push a merged policy in merged/.", folder, base)


def defer_push(args) -> bool:
    """Take ``args.push_to_hub`` away from the trainer (which would push its own re-save, and once per save) and
    return it: the stage pushes its finished folder once, with :func:`push_folder`."""
    wanted = bool(getattr(args, "push_to_hub", False))
    if wanted:
        args.push_to_hub = False
    return wanted
