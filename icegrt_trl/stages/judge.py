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
        judge_every_rollouts: PPO stages: also judge the policy every N rollouts while it trains, logged as
            gold/score (training curves in report.md, and every report_to tracker); 0: only before and after.
    """

    judge_policies: bool = True
    judge_max_new_tokens: int = 16
    judge_num_prompts: int | None = None
    judge_every_rollouts: int = 0


def eval_prompts(ctx: RunContext, judge: JudgeArguments) -> list:
    prompts = ctx.testbed()["eval"]["prompt"]
    return prompts[: judge.judge_num_prompts] if judge.judge_num_prompts else prompts


def judge_policy(ctx: RunContext, model, tokenizer, judge: JudgeArguments) -> float:
    from ..testbed import mean_gold_score

    return round(mean_gold_score(model, tokenizer, eval_prompts(ctx, judge),
                                 max_new_tokens=judge.judge_max_new_tokens), 4)


def gold_judge_hook(ctx: RunContext, tokenizer, judge: JudgeArguments):
    """A PPO hook that judges the policy being trained every `judge_every_rollouts` rollouts (metric gold/score)."""
    from ..ppo import PPOHook

    prompts = eval_prompts(ctx, judge)

    class GoldJudgeHook(PPOHook):
        name = "gold_judge"

        def on_rollout(self, batch, trainer):
            if trainer._rollouts_done % judge.judge_every_rollouts == 0:
                from ..testbed import mean_gold_score

                wrapper = trainer._unwrapped()
                with wrapper.policy_scope(), trainer.accelerator.autocast():
                    score = mean_gold_score(wrapper.policy, tokenizer, prompts,
                                            max_new_tokens=judge.judge_max_new_tokens)
                # logged at once, at the step it measures (a rollout's own metrics wait for the next logging step)
                logs = {"gold/score": round(score, 4)}
                trainer.state.log_history.append({**logs, "step": trainer.state.global_step})
                trainer.control = trainer.callback_handler.on_log(trainer.args, trainer.state, trainer.control, logs)
            return None

    return GoldJudgeHook()
