"""`RewardTrainer`: a thin subclass of TRL's with label smoothing, loss plugins (GRM first) and checked inputs.

With no option of ours switched on, the loss is computed by the same operations as `trl.RewardTrainer`'s, on the same
batches, so training is step-for-step identical (tested). What we add:

* dataset preparation that validates rows (missing columns, empty completions, chosen == rejected, over-length
  rows) and *counts* what it drops or truncates in ``trainer.data_report``, and that records where the prompt ends
  so plugins can score response tokens only (``completion_mask`` in the batch);
* plugins of kind ``"reward_loss"`` (see `icegrt_trl.reward.plugins`) called on the shared forward pass, with
  their parameters in the optimizer and their state saved beside every checkpoint;
* a model-card section stating the loss, the plugins and (for GRM models) the reward head.
"""

from __future__ import annotations

import itertools
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
from datasets import Dataset
from torch.utils.data import DataLoader
from trl import RewardTrainer as _TRLRewardTrainer
from trl.data_utils import common_prefix_length, get_dataset_column_names
from trl.trainer.reward_trainer import DataCollatorForPreference

from ..plugins.registry import resolve_plugin
from ..cards import update_card_section
from ..quantization import keep_4bit_layers_differentiable
from .config import RewardConfig
from .losses import bradley_terry_loss, center_rewards_penalty
from .plugins import GRMRegularizer, PluginLoss, RewardLossContext, RewardLossPlugin, unwrap_peft

logger = logging.getLogger(__name__)

PLUGIN_STATE_FILE = "reward_loss_plugins.pt"
PROMPT_LEN_COLUMNS = ("chosen_prompt_len", "rejected_prompt_len")


@dataclass
class PreferenceCollator(DataCollatorForPreference):
    """TRL's preference collator (chosen rows first, then rejected, right-padded) plus ``completion_mask`` (1 on
    response tokens) when the examples carry prompt lengths, and any extra plugin columns passed through."""

    extra_keys: tuple[str, ...] = ()

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        out = super().torch_call(examples)
        if all(k in examples[0] for k in PROMPT_LEN_COLUMNS):
            length = out["input_ids"].shape[1]
            seq = torch.tensor([len(e["chosen_ids"]) for e in examples] + [len(e["rejected_ids"]) for e in examples])
            start = torch.tensor([e["chosen_prompt_len"] for e in examples]
                                 + [e["rejected_prompt_len"] for e in examples])
            pos = torch.arange(length)
            out["completion_mask"] = ((pos >= start[:, None]) & (pos < seq[:, None])).long()
        for key in self.extra_keys:
            if key in examples[0]:
                values = [e[key] for e in examples]
                try:
                    out[key] = torch.tensor(values)
                except (TypeError, ValueError):
                    out[key] = values
        return out


def is_empty_completion(completion) -> bool:
    """A completion with no text: None, blank, or (conversational) only blank messages. RewardTrainer refuses such
    pairs by default (``empty_completions``)."""
    if completion is None:
        return True
    if isinstance(completion, str):
        return completion.strip() == ""
    if isinstance(completion, list):  # conversational: every message empty
        return all(not str(m.get("content") or "").strip() for m in completion)
    return False


class RewardTrainer(_TRLRewardTrainer):
    """TRL's `RewardTrainer` with label smoothing, extra-loss plugins (GRM) and validated, counted data preparation.

    Args (beyond TRL's):
        loss_plugins: plugin instances or names of kind ``"reward_loss"``, added to those named in
            ``args.loss_plugins`` (and to the GRM plugin that ``args.grm_regularizer`` switches on).

    Attributes:
        data_report: per dataset name, rows in / dropped (identical, empty, over-length) / truncated / used.
        loss_plugins: the resolved plugin instances.
    """

    _tag_names = ["trl", "reward-trainer", "icegrt-trl"]

    def __init__(self, model, args: RewardConfig | None = None, data_collator=None, train_dataset=None,
                 eval_dataset=None, processing_class=None, *pos, loss_plugins: list | None = None, **kwargs):
        if args is None:
            name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "") or "model"
            args = RewardConfig(f"{str(name).rstrip('/').split('/')[-1]}-Reward")
        elif not isinstance(args, RewardConfig):
            raise TypeError(f"icegrt_trl.RewardTrainer needs an icegrt_trl.RewardConfig, got {type(args).__name__}.")
        self.data_report: dict[str, dict[str, int | None]] = {}
        names = list(args.loss_plugins or [])
        if args.grm_regularizer is not None and GRMRegularizer.name not in names:
            names.insert(0, GRMRegularizer.name)  # `grm_regularizer` is shorthand for the "grm" plugin
        self.loss_plugins: list[RewardLossPlugin] = [
            resolve_plugin("reward_loss", s, args) for s in names + list(loss_plugins or [])]
        seen: dict[str, RewardLossPlugin] = {}
        for plugin in self.loss_plugins:
            if plugin.name in seen:
                raise ValueError(
                    f"The {plugin.name!r} reward-loss plugin is given twice ({seen[plugin.name].describe()} and "
                    f"{plugin.describe()}): it would add its loss twice. Name it once — in RewardConfig "
                    f"(grm_regularizer or loss_plugins) or as an instance in RewardTrainer(loss_plugins=...).")
            seen[plugin.name] = plugin
        self._extra_iters: dict[int, Any] = {}
        extra_keys = tuple(dict.fromkeys(c for p in self.loss_plugins for c in p.signature_columns))
        self._batch_only_keys = {"completion_mask", *extra_keys}
        super().__init__(model, args, data_collator, train_dataset, eval_dataset, processing_class, *pos, **kwargs)
        # QLoRA on a CPU: evaluate() before train() must not leave the 4-bit base without a backward
        keep_4bit_layers_differentiable(self.model)
        if data_collator is None:
            self.data_collator = PreferenceCollator(
                pad_token_id=self.processing_class.pad_token_id,
                pad_to_multiple_of=self.args.pad_to_multiple_of,
                extra_keys=extra_keys,
            )
        for plugin in self.loss_plugins:
            plugin.setup(self)
            plugin.to(self.args.device)

    # ------------------------------------------------------------------ data
    def _row_policy(self, dataset, predicate, policy: str, option: str, what: str, name: str):
        """Drop (counting) or reject rows matching `predicate`; returns (dataset, number dropped or None)."""
        if not isinstance(dataset, Dataset):  # streaming: no counts, checked lazily
            def keep(ex):
                if predicate(ex) and policy == "error":
                    raise ValueError(f"A row of the {name} dataset has {what}: {ex!r}. Set {option}='drop' to drop it.")
                return not predicate(ex)
            return dataset.filter(keep), None
        bad = [i for i, ex in enumerate(dataset) if predicate(ex)]
        if bad and policy == "error":
            raise ValueError(
                f"{len(bad)} row(s) of the {name} dataset have {what} (first: row {bad[0]}: {dataset[bad[0]]!r}). "
                f"Fix the data, or set {option}='drop' to drop and count them."
            )
        if bad:
            bad_set = set(bad)
            dataset = dataset.select([i for i in range(len(dataset)) if i not in bad_set])
            logger.warning("Dropped %d row(s) of the %s dataset with %s (%s='drop').", len(bad), name, what, option)
        return dataset, len(bad)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        report = {"rows_in": len(dataset) if isinstance(dataset, Dataset) else None}
        columns = get_dataset_column_names(dataset)
        processed = ("chosen_ids" in columns and "rejected_ids" in columns) or (
            "chosen_input_ids" in columns and "rejected_input_ids" in columns)
        if not processed:
            missing = [c for c in ("chosen", "rejected") if c not in columns]
            if missing:
                raise ValueError(
                    f"The {dataset_name} dataset lacks column(s) {missing}: a preference dataset needs 'chosen' and "
                    f"'rejected' (and optionally 'prompt'), or tokenized 'chosen_ids'/'rejected_ids'. "
                    f"Columns found: {columns}."
                )
            policy = getattr(args, "empty_completions", "error")
            dataset, report["dropped_empty"] = self._row_policy(
                dataset, lambda ex: is_empty_completion(ex["chosen"]) or is_empty_completion(ex["rejected"]), policy,
                "empty_completions", "an empty chosen or rejected completion", dataset_name)
            policy = getattr(args, "identical_pairs", "drop")
            dataset, report["dropped_identical"] = self._row_policy(
                dataset, lambda ex: ex["chosen"] == ex["rejected"], policy, "identical_pairs",
                "chosen == rejected (no preference)", dataset_name)
        if isinstance(dataset, Dataset) and len(dataset) == 0:
            raise ValueError(f"The {dataset_name} dataset has no rows left to train or evaluate on.")

        max_length = args.max_length
        args.max_length = None  # TRL would drop silently; we count (or truncate) below
        try:
            dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        finally:
            args.max_length = max_length

        if not all(c in get_dataset_column_names(dataset) for c in PROMPT_LEN_COLUMNS):
            dataset = dataset.map(self._prompt_lengths, fn_kwargs={"tokenizer": processing_class})

        if max_length is not None:
            too_long = lambda ex: len(ex["chosen_ids"]) > max_length or len(ex["rejected_ids"]) > max_length  # noqa
            policy = getattr(args, "over_length", "drop")
            if policy == "truncate":
                n = sum(map(too_long, dataset)) if isinstance(dataset, Dataset) else None
                dataset = dataset.map(self._truncate, fn_kwargs={"max_length": max_length})
                report["truncated_over_length"] = n
                if n:
                    logger.warning("Truncated %d row(s) of the %s dataset to the last %d tokens.", n, dataset_name,
                                   max_length)
            else:
                dataset, report["dropped_over_length"] = self._row_policy(
                    dataset, too_long, policy, "over_length", f"more than max_length={max_length} tokens",
                    dataset_name)
        report["rows_used"] = len(dataset) if isinstance(dataset, Dataset) else None
        self.data_report[dataset_name] = report
        return dataset

    @staticmethod
    def _prompt_lengths(example, tokenizer):
        """Where the response starts in chosen_ids / rejected_ids: the shared prefix with the tokenized prompt
        (robust to chat templates), or, without a prompt column, the prefix chosen and rejected share."""
        chosen, rejected = example["chosen_ids"], example["rejected_ids"]
        prompt = example.get("prompt")
        if prompt is None:
            n = common_prefix_length(chosen, rejected)
            return {"chosen_prompt_len": n, "rejected_prompt_len": n}
        if isinstance(prompt, list):
            ids = tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True, return_dict=True)
            ids = ids["input_ids"]
        else:
            ids = tokenizer(text=prompt)["input_ids"]
        return {"chosen_prompt_len": common_prefix_length(ids, chosen),
                "rejected_prompt_len": common_prefix_length(ids, rejected)}

    @staticmethod
    def _truncate(example, max_length):
        out = {}
        for side in ("chosen", "rejected"):
            ids = example[f"{side}_ids"]
            cut = max(0, len(ids) - max_length)
            out[f"{side}_ids"] = ids[cut:]
            out[f"{side}_prompt_len"] = max(0, example[f"{side}_prompt_len"] - cut)
        return out

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            extra = [c for p in self.loss_plugins for c in p.signature_columns]
            self._signature_columns = ["chosen_ids", "rejected_ids", "margin", *PROMPT_LEN_COLUMNS, *extra]

    # ------------------------------------------------------------------ loss
    def _next_extra_batch(self, index: int, plugin: RewardLossPlugin):
        if index not in self._extra_iters:
            dataset = plugin.extra_dataset(self)
            if dataset is None:
                self._extra_iters[index] = None
            else:
                loader = DataLoader(dataset, batch_size=self.args.per_device_train_batch_size, shuffle=True,
                                    collate_fn=plugin.extra_collator(self),
                                    generator=torch.Generator().manual_seed(self.args.seed))
                self._extra_iters[index] = itertools.chain.from_iterable(itertools.repeat(loader))
        it = self._extra_iters[index]
        return None if it is None else self._prepare_inputs(next(it))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        batch_only = {k: inputs.pop(k) for k in list(inputs) if k in self._batch_only_keys}

        # If not set, defaults from model config and may warn since cache isn't compatible with gradient checkpointing
        inputs["use_cache"] = False
        forward_kwargs = {}
        for plugin in self.loss_plugins:
            forward_kwargs.update(plugin.forward_kwargs(self, mode))
        outputs = model(**inputs, **forward_kwargs)

        rewards_chosen, rewards_rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
        loss = bradley_terry_loss(rewards_chosen, rewards_rejected, inputs.get("margin"), self.args.label_smoothing)
        if self.args.center_rewards_coefficient is not None:
            loss += self.args.center_rewards_coefficient * center_rewards_penalty(rewards_chosen, rewards_rejected)

        if self.loss_plugins:
            self._metrics[mode]["loss/bt"].append(loss.item())
            base_weight, extra = 1.0, 0.0
            for i, plugin in enumerate(self.loss_plugins):
                ctx = RewardLossContext(
                    trainer=self, model=model, mode=mode, input_ids=inputs["input_ids"],
                    attention_mask=inputs["attention_mask"], completion_mask=batch_only.get("completion_mask"),
                    outputs=outputs, rewards_chosen=rewards_chosen, rewards_rejected=rewards_rejected,
                    batch=batch_only, extra_batch=self._next_extra_batch(i, plugin) if mode == "train" else None,
                )
                result: PluginLoss = plugin.compute_loss(ctx)
                base_weight *= result.base_weight
                extra = extra + result.loss
                for key, value in result.metrics.items():
                    self._metrics[mode][key].append(value)
            loss = base_weight * loss + extra

        if mode == "train":
            num_tokens_in_batch = self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
            self._total_train_tokens += num_tokens_in_batch // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]

        with torch.no_grad():
            all_rewards = self.accelerator.gather(outputs.logits)
            self._metrics[mode]["min_reward"].append(all_rewards.min().item())
            self._metrics[mode]["mean_reward"].append(all_rewards.mean().item())
            self._metrics[mode]["max_reward"].append(all_rewards.max().item())
            mean_accuracy = (rewards_chosen > rewards_rejected).float().mean()
            mean_accuracy = self.accelerator.gather_for_metrics(mean_accuracy).mean().item()
            self._metrics[mode]["accuracy"].append(mean_accuracy)
            mean_margin = (rewards_chosen - rewards_rejected).mean()
            mean_margin = self.accelerator.gather_for_metrics(mean_margin).mean()
            self._metrics[mode]["margin"].append(mean_margin.item())

        if return_outputs and isinstance(outputs, dict) and any(k != "logits" and v is not None
                                                              for k, v in outputs.items()):
            outputs = {"logits": outputs.logits}  # evaluation gathers every output: keep the rewards only
        return (loss, outputs) if return_outputs else loss

    # ------------------------------------------------------------------ optimizer, checkpoints, card
    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        params = [p for plugin in self.loss_plugins for p in plugin.parameters() if p.requires_grad]
        if params:
            optimizer.add_param_group({"params": params, "weight_decay": 0.0})
        return optimizer

    def plugin_state_dict(self) -> dict:
        return {f"{i}:{p.name}": p.state_dict() for i, p in enumerate(self.loss_plugins)}

    def load_plugin_state(self, folder: str) -> bool:
        path = os.path.join(folder, PLUGIN_STATE_FILE)
        if not os.path.isfile(path):
            return False
        states = torch.load(path, map_location="cpu", weights_only=True)
        for i, plugin in enumerate(self.loss_plugins):
            key = f"{i}:{plugin.name}"
            if key not in states:
                raise ValueError(f"{path} has no state for plugin {key} (found {sorted(states)}).")
            plugin.load_state_dict(states[key])
        return True

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        super().save_model(output_dir, _internal_call)
        output_dir = output_dir or self.args.output_dir
        if self.loss_plugins and self.args.should_save:
            os.makedirs(output_dir, exist_ok=True)
            torch.save(self.plugin_state_dict(), os.path.join(output_dir, PLUGIN_STATE_FILE))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        self.load_plugin_state(resume_from_checkpoint)

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)
        if not self.is_world_process_zero():
            return
        a = self.args
        lines = ["## Reward training (icegrt-trl)", "",
                 f"- loss: Bradley–Terry, label smoothing {a.label_smoothing}, center_rewards_coefficient "
                 f"{a.center_rewards_coefficient}",
                 f"- plugins: {', '.join(p.describe() for p in self.loss_plugins) or 'none'}"]
        for name, rep in self.data_report.items():
            lines.append(f"- data `{name}`: " + ", ".join(f"{k} {v}" for k, v in rep.items() if v is not None))
        update_card_section(a.output_dir, "reward-training", "\n".join(lines))
        base = unwrap_peft(self.model)
        if hasattr(base, "model_card_section"):
            update_card_section(a.output_dir, "reward-head", base.model_card_section())


__all__ = ["PLUGIN_STATE_FILE", "PreferenceCollator", "RewardTrainer"]
