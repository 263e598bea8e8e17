"""SFT stage: TRL's `SFTTrainer` on prompt/completion data, judged by the gold reward on the testbed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from trl import ModelConfig, SFTConfig, SFTTrainer, get_peft_config

from ..cards import stage_card_section
from ..hub import defer_push, push_folder
from .base import DataArguments, RunContext, Stage, documented
from .judge import JudgeArguments, judge_policy
from .loading import load_model, load_tokenizer


@documented
@dataclass
class SFTDataArguments(DataArguments):
    """Demonstrations (TRL's `prompt`/`completion` or `messages` format).

    Args:
        dataset_train_split: split of demonstrations to train on (default: train; the testbed's sft).
    """

    testbed_train_split: ClassVar[str] = "sft"


class SFTStage(Stage):
    name = "sft"
    help = "Supervised fine-tuning with TRL's SFTTrainer (prompt/completion or messages data)."
    config_classes = (ModelConfig, SFTDataArguments, SFTConfig, JudgeArguments)

    def run(self, ctx: RunContext, model_args: ModelConfig, data: SFTDataArguments, args: SFTConfig,
            judge: JudgeArguments) -> dict[str, Any]:
        tokenizer = load_tokenizer(ctx, model_args.model_name_or_path)
        model = load_model(ctx, model_args, tokenizer, kind="causal", seed=args.seed)
        train = ctx.dataset(data, data.train_split())
        eval_splits = {s: ctx.dataset(data, s) for s in data.eval_splits(ctx)}
        figures: dict[str, Any] = {"model": model_args.model_name_or_path, "train_examples": len(train)}
        use_judge = data.dataset_name == "testbed" and judge.judge_policies
        if use_judge:
            figures["gold_score_before"] = judge_policy(ctx, model, tokenizer, judge)
        push = defer_push(args)
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=train,
            eval_dataset=eval_splits or None,
            processing_class=tokenizer,
            peft_config=get_peft_config(model_args),
        )
        result = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
        out = ctx.stage_dir(self.name)
        trainer.save_model(str(out))
        tokenizer.save_pretrained(str(out))
        figures["train_loss"] = round(result.training_loss, 4)
        figures["train_steps"] = result.global_step
        if use_judge:
            figures["gold_score_after"] = judge_policy(ctx, trainer.model, tokenizer, judge)
        trainer.create_model_card(dataset_name=data.dataset_name)  # TRL's card, into args.output_dir (= out)
        stage_card_section(out, self.name, str(ctx.recipe.path) if ctx.recipe.path else None,
                           f"{data.dataset_name} ({data.train_split()})", figures,
                           "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
                           "model = AutoModelForCausalLM.from_pretrained(folder)\n"
                           "tokenizer = AutoTokenizer.from_pretrained(folder)")
        if push:
            figures["hub_repo"] = push_folder(out, args)
        return figures
