"""PPO stage: our PPOTrainer from the SFT policy, with the reward stage's model or the testbed's gold reward."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from trl import ModelConfig, get_peft_config

from ..ppo import PPOConfig, PPOTrainer
from ..cards import stage_card_section
from ..hub import defer_push, push_folder
from ..quantization import keep_4bit_layers_differentiable
from ..report import write_log_history
from .base import LOAD_DTYPES, DataArguments, RunContext, Stage, documented
from .judge import JudgeArguments, gold_judge_hook, judge_policy
from .loading import load_model, load_tokenizer


@documented
@dataclass
class PPODataArguments(DataArguments):
    """Prompts for PPO.

    Args:
        dataset_train_split: split of prompts to sample responses for (a `prompt` column, text or chat messages;
            default: train; the testbed's unlabeled).
        dataset_eval_splits: prompts for `evaluate()` and the sample generations, the first one is used (default:
            test when the dataset has one; none on the testbed).
    """

    testbed_train_split: ClassVar[str] = "unlabeled"


@documented
@dataclass
class PPORewardArguments:
    """Where PPO's reward comes from.

    The reward model itself is PPOConfig's ``reward_model_path`` (trl 1.12's field): ``stage:reward`` (the reward
    stage's model, the default), a folder or Hub id of a sequence classifier, or ``gold`` for the testbed's hidden gold
    reward as a reward function (an oracle run). PPOConfig's ``sft_model_path`` is the policy when
    ``model_name_or_path`` is not given (default ``stage:sft``).

    Args:
        reward_tokenizer_path: the reward model's tokenizer when it differs from the policy's (default: the one
            saved with the reward model, used only if it differs).
        value_model_path: a model whose backbone initialises the value model (default: the policy's backbone).
        ptx_split: a split (e.g. ``sft`` on the testbed, ``train``) of SFT or pretraining data used for the ptx loss
            when ``ptx_coef`` > 0 (``text``, ``prompt``/``completion`` or ``messages`` columns).
        ptx_dataset_name: the dataset of ptx_split, when it is not the stage's prompt dataset (e.g.
            trl-lib/Capybara, or a local folder).
        reward_model_dtype: dtype the reward model is loaded in (auto: the policy's ModelConfig dtype; bfloat16
            halves its memory on a GPU).
        reward_model_load_in_4bit: load the reward model in 4-bit NF4 (bitsandbytes; frozen, so no quality loss
            from training, only from quantization).
    """

    reward_tokenizer_path: str | None = None
    value_model_path: str | None = None
    ptx_split: str | None = None
    ptx_dataset_name: str | None = None
    reward_model_dtype: str = "auto"
    reward_model_load_in_4bit: bool = False

    def __post_init__(self):
        if self.ptx_dataset_name and not self.ptx_split:
            raise ValueError("ptx_dataset_name is set but ptx_split is not: name the split of SFT data, e.g. "
                             "ptx_split: train.")
        if self.reward_model_dtype not in LOAD_DTYPES:
            raise ValueError(f"reward_model_dtype={self.reward_model_dtype!r} must be auto, float32, bfloat16 or "
                             "float16.")


class PPOStage(Stage):
    name = "ppo"
    help = "PPO with a value model (icegrt-trl's PPOTrainer) from the SFT policy against a reward model."
    config_classes = (ModelConfig, PPODataArguments, PPOConfig, PPORewardArguments, JudgeArguments)

    def run(self, ctx: RunContext, model_args: ModelConfig, data: PPODataArguments, args: PPOConfig,
            reward: PPORewardArguments, judge: JudgeArguments) -> dict[str, Any]:
        return run_ppo(ctx, model_args, data, args, reward, judge, ctx.stage_dir(self.name))

    @staticmethod
    def _reward(ctx: RunContext, spec: str, reward: PPORewardArguments, tokenizer, seed: int,
                policy_dtype: str | None = None):
        if spec == "gold":
            from ..testbed import gold_reward

            return gold_reward, None
        dtype = policy_dtype if reward.reward_model_dtype == "auto" else reward.reward_model_dtype
        rm_args = ModelConfig(model_name_or_path=spec, dtype=dtype or "float32",
                              load_in_4bit=reward.reward_model_load_in_4bit)
        model = load_model(ctx, rm_args, tokenizer, kind="reward", seed=seed)
        tok_spec = reward.reward_tokenizer_path or (spec if not spec.startswith("testbed:") else None)
        reward_tok = load_tokenizer(ctx, tok_spec) if tok_spec else None
        if reward_tok is not None:
            from ..ppo.rewards import tokenizers_match

            if tokenizers_match(reward_tok, tokenizer):
                reward_tok = None
        return model, reward_tok


def run_ppo(ctx: RunContext, model_args: ModelConfig, data: PPODataArguments, args: PPOConfig,
            reward: PPORewardArguments, judge: JudgeArguments, out, checkpoints_in_out: bool = False) -> dict[str, Any]:
    """PPO from the recipe's options; the final policy goes to `out` (checkpoints to `out/checkpoints` when
    ``checkpoints_in_out``, e.g. for RLP's second PPO, else to ``args.output_dir``)."""
    if not model_args.model_name_or_path:
        model_args.model_name_or_path = args.sft_model_path or "stage:sft"
    reward_spec = args.reward_model_path or "stage:reward"
    args.sft_model_path = args.reward_model_path = None  # consumed here: PPOTrainer takes model objects
    from transformers import set_seed

    set_seed(args.seed)  # value head / adapter initialization depends on the seed alone, not on what ran before
    tokenizer = load_tokenizer(ctx, model_args.model_name_or_path)
    model = load_model(ctx, model_args, tokenizer, kind="causal", seed=args.seed)
    # a 4-bit policy (QLoRA) is judged below before it trains: keep its layers trainable through that forward
    keep_4bit_layers_differentiable(model)
    reward_model, reward_tok = PPOStage._reward(ctx, reward_spec, reward, tokenizer, args.seed, model_args.dtype)
    value_model = None
    if reward.value_model_path:
        value_model = load_model(ctx, ModelConfig(model_name_or_path=reward.value_model_path), tokenizer,
                                 kind="reward", seed=args.seed)
    train = ctx.dataset(data, data.train_split())
    ptx_data = DataArguments(dataset_name=reward.ptx_dataset_name) if reward.ptx_dataset_name else data
    ptx = ctx.dataset(ptx_data, reward.ptx_split) if reward.ptx_split else None
    evals = [ctx.dataset(data, s) for s in data.eval_splits(ctx)]
    use_judge = data.dataset_name == "testbed" and judge.judge_policies
    figures: dict[str, Any] = {"model": model_args.model_name_or_path, "reward": reward_spec,
                               "prompts": len(train)}
    if use_judge:
        figures["gold_score_before"] = judge_policy(ctx, model, tokenizer, judge)
    if checkpoints_in_out or args.output_dir in (None, "", "trainer_output"):
        args.output_dir = str(Path(out) / "checkpoints")
    args.recipe = args.recipe or str(ctx.recipe.path)
    push = defer_push(args)
    trainer = PPOTrainer(
        args=args, processing_class=tokenizer, model=model, reward_model=reward_model,
        reward_processing_classes=reward_tok, train_dataset=train, value_model=value_model,
        eval_dataset=evals[0] if evals else None, peft_config=get_peft_config(model_args), ptx_dataset=ptx,
        dataset_name=_dataset_label(data),
        plugins=[gold_judge_hook(ctx, tokenizer, judge)] if use_judge and judge.judge_every_rollouts else None,
    )
    result = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model(str(out))
    write_log_history(out, trainer.state.log_history)
    last = {}
    for entry in trainer.state.log_history:
        last.update(entry)
    for key in ("objective/scores", "objective/kl", "objective/kl_coef", "objective/entropy"):
        if key in last:
            figures[key] = round(float(last[key]), 4)
    figures["train_steps"] = result.global_step
    if use_judge:
        policy = trainer.accelerator.unwrap_model(trainer.model).policy
        figures["gold_score_after"] = judge_policy(ctx, policy, tokenizer, judge)
    stage_card_section(out, "ppo", args.recipe, _dataset_label(data), figures,
                       'from icegrt_trl.ppo.checkpoints import load_trained\n'
                       'policy, value_model, tokenizer = load_trained(folder)')
    if push:
        figures["hub_repo"] = push_folder(out, args)
    return figures


def _dataset_label(data: DataArguments) -> str:
    """The dataset as the model card names it (the testbed is named with its split)."""
    return f"{data.dataset_name} ({data.train_split()})"
