"""Gold-judge options shared by the stages that produce policies."""

from __future__ import annotations

from dataclasses import dataclass

from .base import RunContext, documented


@documented
@dataclass
class JudgeArguments:
    """How stages judge a policy on the testbed's held-out `eval` prompts with the hidden gold reward.

    Args:
        judge_policies: report the gold score before and after training (testbed datasets only).
        judge_max_new_tokens: generation budget per completion (greedy decoding).
        judge_num_prompts: evaluate on the first N eval prompts only (None: all).
    """

    judge_policies: bool = True
    judge_max_new_tokens: int = 16
    judge_num_prompts: int | None = None


def eval_prompts(ctx: RunContext, judge: JudgeArguments) -> list:
    prompts = ctx.testbed()["eval"]["prompt"]
    return prompts[: judge.judge_num_prompts] if judge.judge_num_prompts else prompts


def judge_policy(ctx: RunContext, model, tokenizer, judge: JudgeArguments) -> float:
    from ..testbed import mean_gold_score

    return round(mean_gold_score(model, tokenizer, eval_prompts(ctx, judge),
                                 max_new_tokens=judge.judge_max_new_tokens), 4)
