"""What a PPO checkpoint holds, and how it is written and read back.

Layout of a saved folder (``save_model`` and every ``checkpoint-N``):

* the policy: ``save_pretrained`` of the (PEFT) model — under PEFT every adapter, the value adapter in ``value/``;
* ``value_head.safetensors``, and ``value_model/`` (the value backbone) when it is neither a PEFT adapter nor the
  policy's own trunk (``value_head_on_policy``);
* ``icegrt_ppo_state.json``: plugin state (KL coefficient, reward moments, warm-up progress, ptx position, hooks),
  ``global_step``, rollouts done, the metrics of the rollout in use;
* ``icegrt_ppo_rollout_rank<r>.pt`` (checkpoints only, one per process): the half-used rollout, when the checkpoint
  falls inside one, so resuming gives the same next steps on every rank.
"""

from __future__ import annotations

import json
import os

import torch
from torch import nn
from transformers.trainer_utils import load_sharded_checkpoint

STATE_FILE = "icegrt_ppo_state.json"
BUFFER_FILE = "icegrt_ppo_rollout_rank{rank}.pt"
VALUE_HEAD_FILE = "value_head.safetensors"
VALUE_MODEL_DIR = "value_model"


def split_wrapper_state_dict(state_dict: dict) -> dict[str, dict]:
    """Split a consolidated ``PolicyAndValue`` state dict into ``policy``, ``head`` and ``backbone`` parts."""
    prefixes = {"policy": "policy.", "head": "value_model.head.", "backbone": "value_model.backbone."}
    parts: dict[str, dict] = {}
    for key, value in state_dict.items():
        for part, prefix in prefixes.items():
            if key.startswith(prefix):
                parts.setdefault(part, {})[key[len(prefix):]] = value
                break
    return parts


def save_policy_and_value(wrapper, output_dir: str, state_dict: dict | None = None) -> None:
    """Policy, value head and value backbone. ``state_dict``: the consolidated state Trainer gathers under DeepSpeed
    ZeRO-3 and FSDP (the live modules hold only shards there), split by module and saved instead."""
    from safetensors.torch import save_file

    parts = split_wrapper_state_dict(state_dict) if state_dict is not None else {}
    wrapper.policy.save_pretrained(output_dir, safe_serialization=True, state_dict=parts.get("policy"))
    head = parts.get("head") or wrapper.value_model.head.state_dict()
    save_file({k: v.detach().contiguous().cpu() for k, v in head.items()}, os.path.join(output_dir, VALUE_HEAD_FILE))
    if wrapper.value_model.adapter is None and not wrapper.value_model.shared:
        wrapper.value_model.backbone.save_pretrained(os.path.join(output_dir, VALUE_MODEL_DIR),
                                                     safe_serialization=True, state_dict=parts.get("backbone"))


def _load_weights(model: nn.Module, folder: str) -> None:
    """Load a ``save_pretrained`` folder (one file or sharded) into ``model`` in place."""
    single = os.path.join(folder, "model.safetensors")
    if os.path.exists(single):
        from safetensors.torch import load_file

        saved, own = load_file(single), model.state_dict()
        tied = set(getattr(model, "_tied_weights_keys", None) or [])
        unexpected = [k for k in saved if k not in own]
        missing = [k for k in own if k not in saved and k not in tied and "lm_head" not in k]
        mismatched = [k for k in saved if k in own and saved[k].shape != own[k].shape]
        if unexpected or missing or mismatched:  # checked before anything is copied: no half-loaded model
            raise ValueError(f"Checkpoint {folder} does not match the model: missing {missing}, unexpected "
                             f"{unexpected}, different shapes {mismatched}. Resume with the model it was saved from.")
        model.load_state_dict(saved, strict=False)
    else:
        load_sharded_checkpoint(model, folder, strict=False)


def load_policy_and_value(wrapper, folder: str, is_peft: bool) -> None:
    """Read back what :func:`save_policy_and_value` wrote, into the live modules."""
    from safetensors.torch import load_file

    if is_peft:
        from peft import set_peft_model_state_dict

        for name in wrapper.policy.peft_config:
            sub = folder if name == "default" else os.path.join(folder, name)
            path = os.path.join(sub, "adapter_model.safetensors")
            if os.path.exists(path):
                set_peft_model_state_dict(wrapper.policy, load_file(path), adapter_name=name)
    else:
        _load_weights(wrapper.policy, folder)
    wrapper.value_model.head.load_state_dict(load_file(os.path.join(folder, VALUE_HEAD_FILE)))
    if wrapper.value_model.adapter is None and not wrapper.value_model.shared:
        _load_weights(wrapper.value_model.backbone, os.path.join(folder, VALUE_MODEL_DIR))


def write_ppo_state(output_dir: str, plugins: dict, global_step: int, rollouts_done: int,
                    rollout_metrics: dict) -> None:
    with open(os.path.join(output_dir, STATE_FILE), "w") as f:
        json.dump({"plugins": plugins, "global_step": global_step, "rollouts_done": rollouts_done,
                   "rollout_metrics": rollout_metrics}, f, indent=1)


def read_ppo_state(folder: str) -> dict | None:
    path = os.path.join(folder, STATE_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def save_rollout(buffer: dict, folder: str, rank: int) -> None:
    os.makedirs(folder, exist_ok=True)
    data = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in buffer.items() if k != "perms"}
    data["perms"] = [p.cpu() for p in buffer["perms"]]
    torch.save(data, os.path.join(folder, BUFFER_FILE.format(rank=rank)))


def load_rollout(folder: str, rank: int, device) -> dict | None:
    path = os.path.join(folder, BUFFER_FILE.format(rank=rank))
    if not os.path.exists(path):
        return None
    data = torch.load(path, weights_only=False)
    buffer = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in data.items()}
    buffer["perms"] = [p.to(device) for p in data["perms"]]
    return buffer


def load_trained(folder, base_model: str | None = None, dtype=None):
    """Reload what a PPO run saved (``save_model``, the ppo stage's folder, or its Hub repo) for use elsewhere.

    Returns ``(policy, value_model, tokenizer)``. Under PEFT the policy is a ``PeftModel`` with the policy adapter
    (``default``) active and the value adapter loaded beside it; `value_model` is a :class:`ValueModel` sharing that
    base (values ``value_model(input_ids, attention_mask)``, one per token). `base_model` replaces the base named
    in ``adapter_config.json`` (e.g. the Hub id of a base that was a local folder when training ran).
    """
    from pathlib import Path

    from safetensors.torch import load_file
    from transformers import AutoModel, AutoModelForCausalLM

    from ..stages.loading import load_saved_tokenizer
    from .modeling import VALUE_ADAPTER, SharedValueHead, ValueModel, backbone_of, is_peft_model, new_value_head

    folder = Path(folder)
    head_file = folder / VALUE_HEAD_FILE
    if not head_file.is_file():
        raise FileNotFoundError(f"{folder} has no {VALUE_HEAD_FILE}: it is not the output of a PPO run (save_model or "
                                "the ppo stage's folder).")
    kwargs = {"dtype": dtype} if dtype is not None else {}
    tokenizer = load_saved_tokenizer(str(folder))
    if (folder / "adapter_config.json").is_file():
        from peft import PeftConfig, PeftModel

        base_path = base_model or PeftConfig.from_pretrained(str(folder)).base_model_name_or_path
        base = AutoModelForCausalLM.from_pretrained(base_path, **kwargs)
        policy = PeftModel.from_pretrained(base, str(folder), adapter_name="default")
        shared = not (folder / VALUE_ADAPTER).is_dir()  # value_head_on_policy: no value adapter was saved
        if not shared:
            policy.load_adapter(str(folder / VALUE_ADAPTER), adapter_name=VALUE_ADAPTER)
        policy.set_adapter("default")
        backbone, adapter = backbone_of(policy), (None if shared else VALUE_ADAPTER)
    else:
        policy = AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
        shared = not (folder / VALUE_MODEL_DIR).is_dir()
        backbone = None if shared else AutoModel.from_pretrained(str(folder / VALUE_MODEL_DIR), **kwargs)
        adapter = None
    head_state = load_file(str(head_file))
    head = new_value_head(head_state["weight"].shape[1]).to(head_state["weight"].dtype)
    head.load_state_dict(head_state)
    if shared:  # the head reads the policy's own last hidden state (under PEFT: with the policy adapter active)
        value = SharedValueHead(policy, head, "default" if is_peft_model(policy) else None)
    else:
        value = ValueModel(backbone, head, adapter=adapter, peft_model=policy if adapter else None)
    policy.eval()
    value.eval()
    return policy, value, tokenizer
