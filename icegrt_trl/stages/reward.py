"""Reward stages: ``reward`` (BT or GRM reward model) and ``reward_pmp`` (Qwen's PMP on a large noisy comparison set,
then fine-tuning on the small cleaner set), both evaluated by pairwise accuracy with bootstrap CIs on every eval split.

The saved model is merged (no adapter left: GRM's repo warns that LoRA must be merged before export) and loads with
``GRMRewardModel.from_pretrained(path)`` (GRM) or ``AutoModelForSequenceClassification.from_pretrained(path)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from trl import ModelConfig, get_peft_config

from ..recipe import RecipeError
from ..reward import GRMRewardModel, RewardConfig, RewardTrainer
from ..reward.evaluation import evaluate_reward_model, flatten_results, write_reward_eval
from ..cards import stage_card_section
from ..hub import defer_push, push_folder
from .base import DataArguments, RunContext, Stage, documented
from .loading import load_model, load_tokenizer


@documented
@dataclass
class RewardDataArguments(DataArguments):
    """Preference data (TRL's `prompt`/`chosen`/`rejected` format, text or conversational).

    Args:
        dataset_train_split: split of preference pairs to train on (default: train; the testbed's preferences).
        dataset_eval_splits: splits on which the stage reports pairwise accuracy with bootstrap intervals (default:
            test when the dataset has one; the testbed's preferences_id and preferences_ood).
    """

    testbed_train_split: ClassVar[str] = "preferences"
    testbed_eval_splits: ClassVar[tuple[str, ...]] = ("preferences_id", "preferences_ood")


@documented
@dataclass
class RewardModelArguments:
    """How the reward model is built.

    Args:
        reward_model_type: ``"grm"`` — the causal LM with its LM head kept plus a reward head (`GRMRewardModel`,
            needed by `grm_regularizer`); ``"classifier"`` — TRL's usual `AutoModelForSequenceClassification`.
            ``"auto"``: ``grm`` when a GRM regularizer is set, else ``classifier``.
        head_type: GRM reward head, ``"mlp"`` (GRM's default) or ``"linear"``.
        head_hidden_size: width of the MLP head (GRM: 1024).
        eval_bootstrap_samples: resamples of the accuracy confidence intervals.
    """

    reward_model_type: str = "auto"
    head_type: str = "mlp"
    head_hidden_size: int = 1024
    eval_bootstrap_samples: int = 1000

    def __post_init__(self):
        if self.reward_model_type not in ("auto", "grm", "classifier"):
            raise ValueError(f"reward_model_type={self.reward_model_type!r} must be 'auto', 'grm' or 'classifier'.")


@documented
@dataclass
class PMPArguments:
    """Qwen-style preference-model pretraining (PMP) before the reward-model fine-tune.

    Args:
        pmp_split: the large, noisy comparison split (testbed: ``preferences_pmp``, 4000 pairs, 35% noise).
        pmp_num_train_epochs: epochs of the PMP phase (Qwen: 1).
        pmp_learning_rate: learning rate of the PMP phase (default: the stage's `learning_rate`).
    """

    pmp_split: str = "preferences_pmp"
    pmp_num_train_epochs: float = 1.0
    pmp_learning_rate: float | None = None


def _build_model(ctx: RunContext, model_args: ModelConfig, margs: RewardModelArguments, args: RewardConfig,
                 tokenizer):
    from transformers import set_seed

    set_seed(args.seed)  # the new head's initialization depends on the seed alone, not on what ran before
    spec = model_args.model_name_or_path
    kind = margs.reward_model_type
    if kind == "auto":
        kind = "grm" if args.grm_regularizer else "classifier"
    if kind == "classifier" and args.grm_regularizer:
        raise RecipeError("grm_regularizer needs reward_model_type 'grm' (a model that keeps its LM head).")
    if kind == "classifier":
        return load_model(ctx, model_args, tokenizer, kind="reward", seed=args.seed)
    path = None if spec.startswith("testbed:") else ctx.resolve_path(spec)
    if path is not None:
        from transformers import PretrainedConfig

        if PretrainedConfig.get_config_dict(path)[0].get("model_type") == "grm_reward":
            return GRMRewardModel.from_pretrained(path, head_type=margs.head_type)
    lm = load_model(ctx, model_args, tokenizer, kind="causal", seed=args.seed)
    return GRMRewardModel.from_causal_lm(lm, head_type=margs.head_type, head_hidden_size=margs.head_hidden_size)


def _peft_config(model_args: ModelConfig, model):
    peft = get_peft_config(model_args)
    if peft is not None:
        peft.task_type = "SEQ_CLS"  # ModelConfig defaults to CAUSAL_LM, whose wrapper expects a generation model
    if peft is not None and isinstance(model, GRMRewardModel):
        peft.modules_to_save = list(dict.fromkeys([*(peft.modules_to_save or []), "score"]))  # the head trains
    return peft


def _train(model, args: RewardConfig, train, tokenizer, peft, loss_plugins=None):
    trainer = RewardTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer,
                            peft_config=peft, loss_plugins=loss_plugins)
    result = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    model = trainer.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return trainer, result, model


def _finish(ctx, out, trainer, model, tokenizer, evals, margs, args, prefix="", dataset=None):
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    trainer.create_model_card(dataset_name=dataset)  # TRL's card + our loss/head sections, into args.output_dir
    results = evaluate_reward_model(model, tokenizer, evals, n_resamples=margs.eval_bootstrap_samples,
                                    seed=args.seed)
    write_reward_eval(results, out, model_dir=out)
    figures = flatten_results(results, prefix)
    stage_card_section(out, "reward", str(ctx.recipe.path) if ctx.recipe.path else None, dataset or "preference pairs",
                       figures, "from icegrt_trl.reward.evaluation import load_reward_model\n"
                                "model, tokenizer = load_reward_model(folder)  # GRM or sequence classifier, head type "
                                "as saved")
    return figures


class RewardStage(Stage):
    name = "reward"
    help = "Reward model with our RewardTrainer (BT, label smoothing, GRM regularizers), evaluated by accuracy."
    config_classes = (ModelConfig, RewardDataArguments, RewardConfig, RewardModelArguments)

    def run(self, ctx: RunContext, model_args: ModelConfig, data: RewardDataArguments, args: RewardConfig,
            margs: RewardModelArguments) -> dict[str, Any]:
        return train_reward_model(ctx, model_args, data, args, margs, ctx.stage_dir(self.name))


def train_reward_model(ctx: RunContext, model_args: ModelConfig, data: RewardDataArguments, args: RewardConfig,
                       margs: RewardModelArguments, out, extra_train=None, loss_plugins=None) -> dict[str, Any]:
    """Build, train, save (merged) to `out` and evaluate a reward model. ``extra_train``: pairs added to the recipe's
    training split (RLP's synthetic pairs); ``loss_plugins``: reward-loss plugin instances (RLP's UML)."""
    from datasets import concatenate_datasets

    push = defer_push(args)  # the stage pushes its finished (merged) folder, not the trainer's adapter re-save
    tokenizer = load_tokenizer(ctx, model_args.model_name_or_path)
    model = _build_model(ctx, model_args, margs, args, tokenizer)
    train = ctx.dataset(data, data.train_split())
    if extra_train is not None and len(extra_train):
        cols = ["prompt", "chosen", "rejected"]
        train = concatenate_datasets([train.select_columns(cols), extra_train.select_columns(cols)])
    evals = {s: ctx.dataset(data, s) for s in data.eval_splits(ctx)}
    trainer, result, model = _train(model, args, train, tokenizer, _peft_config(model_args, model), loss_plugins)
    figures: dict[str, Any] = {"model": model_args.model_name_or_path, "train_pairs": len(train),
                               "train_loss": round(result.training_loss, 4), "train_steps": result.global_step,
                               "grm_regularizer": args.grm_regularizer, **_data_figures(trainer)}
    figures.update(_finish(ctx, out, trainer, model, tokenizer, evals, margs, args,
                           dataset=f"{data.dataset_name} ({data.train_split()})"))
    if push:
        figures["hub_repo"] = push_folder(out, args)
    return figures


class RewardPMPStage(Stage):
    name = "reward_pmp"
    help = "Qwen's preference-model pretraining on a large noisy set, then RM fine-tune on the small clean set."
    config_classes = (ModelConfig, RewardDataArguments, RewardConfig, RewardModelArguments, PMPArguments)

    def run(self, ctx: RunContext, model_args: ModelConfig, data: RewardDataArguments, args: RewardConfig,
            margs: RewardModelArguments, pmp: PMPArguments) -> dict[str, Any]:
        push = defer_push(args)
        tokenizer = load_tokenizer(ctx, model_args.model_name_or_path)
        model = _build_model(ctx, model_args, margs, args, tokenizer)
        evals = {s: ctx.dataset(data, s) for s in data.eval_splits(ctx)}
        out = ctx.stage_dir(self.name)
        pmp_train = ctx.dataset(data, pmp.pmp_split)
        pmp_args = dataclasses.replace(
            args, output_dir=str(out / "pmp"), num_train_epochs=pmp.pmp_num_train_epochs,
            learning_rate=pmp.pmp_learning_rate or args.learning_rate, resume_from_checkpoint=None)
        trainer, result, model = _train(model, pmp_args, pmp_train, tokenizer, _peft_config(model_args, model))
        figures: dict[str, Any] = {"model": model_args.model_name_or_path, "pmp_pairs": len(pmp_train),
                                   "pmp/train_loss": round(result.training_loss, 4)}
        figures.update(_finish(ctx, out / "pmp", trainer, model, tokenizer, evals, margs, pmp_args, prefix="pmp/"))

        train = ctx.dataset(data, data.train_split())
        trainer, result, model = _train(model, args, train, tokenizer, _peft_config(model_args, model))
        figures.update({"rm_pairs": len(train), "rm/train_loss": round(result.training_loss, 4),
                        **_data_figures(trainer)})
        figures.update(_finish(ctx, out, trainer, model, tokenizer, evals, margs, args, prefix="rm/"))
        if push:
            figures["hub_repo"] = push_folder(out, args)
        return figures


def _data_figures(trainer) -> dict:
    rep = trainer.data_report.get("train", {})
    return {f"data/{k}": v for k, v in rep.items() if v}


__all__ = ["PMPArguments", "RewardDataArguments", "RewardModelArguments", "RewardPMPStage", "RewardStage"]
