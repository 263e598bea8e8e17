"""Eval stage: judge policies by the gold reward (policy mode) or reward models by pairwise accuracy (reward mode)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trl import ModelConfig

from ..recipe import RecipeError
from .base import DataArguments, RunContext, Stage, documented
from .judge import JudgeArguments, eval_prompts
from .loading import load_model, load_tokenizer, save_dir_exists

POLICY_STAGES = ("sft", "ppo", "rlp_uml/ppo", "rlp_spg/ppo")  # RLP's policies: <output_dir>/rlp_<method>/ppo


@documented
@dataclass
class EvalArguments:
    """Options of the eval stage.

    Args:
        mode: ``policy`` — mean gold score of each policy on the held-out eval prompts, and its gold-judged
            win-rate over `reference_policy`; ``reward`` — pairwise accuracy of each reward model on
            preference splits, with bootstrap confidence intervals.
        policies: model specs to judge (``stage:sft``, ``testbed:llama``, a folder...). Empty: every policy
            stage of this run that saved a model, plus the untrained initial model for scale.
        reference_policy: the policy that win-rates are computed against (default: the SFT stage's).
        reward_models: reward-mode model specs. Empty: every reward stage of this run that saved a model.
        preference_splits: reward-mode splits (default: the testbed's clean in- and out-of-distribution pairs; test
            for other datasets).
        bootstrap_samples: resamples for the reward-mode confidence intervals.
        seed: seed of the bootstrap.
    """

    mode: str = "policy"
    policies: list[str] = field(default_factory=list)
    reference_policy: str = "stage:sft"
    reward_models: list[str] = field(default_factory=list)
    preference_splits: list[str] = field(default_factory=list)
    bootstrap_samples: int = 1000
    seed: int = 0

    def __post_init__(self):
        if self.mode not in ("policy", "reward"):
            raise ValueError(f"EvalArguments.mode must be 'policy' or 'reward', got {self.mode!r}.")


class EvalStage(Stage):
    name = "eval"
    help = "Judge policies with the testbed's gold reward (mean score, win-rate) or reward models by accuracy."
    config_classes = (EvalArguments, DataArguments, JudgeArguments)

    def run(self, ctx: RunContext, args: EvalArguments, data: DataArguments, judge: JudgeArguments) -> dict[str, Any]:
        if args.mode == "reward":
            return self._reward_mode(ctx, args, data)
        if data.dataset_name != "testbed":
            raise RecipeError("Policy-mode eval needs the testbed's gold reward: set dataset_name: testbed.")
        return self._policy_mode(ctx, args, judge)

    def _policy_mode(self, ctx, args: EvalArguments, judge: JudgeArguments) -> dict[str, Any]:
        from ..testbed import gold_reward, generate_completions, win_rate_of_completions

        specs = args.policies or [f"stage:{s}" for s in POLICY_STAGES if save_dir_exists(ctx.stage_dir(s))]
        if not specs:
            raise RecipeError("Nothing to evaluate: no policy stage has saved a model in this run, and "
                              "'policies' is empty. Run a policy stage first or list policies.")
        if not args.policies:
            init = ctx.results.get("sft", {}).get("model")  # the model the SFT stage started from
            if init and init.startswith("testbed:"):
                specs.insert(0, init)
        prompts = eval_prompts(ctx, judge)
        completions = {}
        for spec in specs + ([args.reference_policy] if args.reference_policy not in specs else []):
            tokenizer = load_tokenizer(ctx, spec)
            model = load_model(ctx, ModelConfig(model_name_or_path=spec), tokenizer, kind="causal", seed=args.seed)
            completions[spec] = generate_completions(model, tokenizer, prompts,
                                                     max_new_tokens=judge.judge_max_new_tokens)
        figures: dict[str, Any] = {"num_prompts": len(prompts)}
        reference = completions[args.reference_policy]
        for spec in specs:
            scores = gold_reward(prompts, completions[spec])
            figures[f"{spec}/gold_score"] = round(sum(scores) / len(scores), 4)
            figures[f"{spec}/exact_match"] = round(sum(s == 1.0 for s in scores) / len(scores), 4)
            if spec != args.reference_policy:
                rate = win_rate_of_completions(prompts, completions[spec], reference)
                figures[f"{spec}/win_rate_vs_{args.reference_policy}"] = round(rate, 4)
        return figures

    def _reward_mode(self, ctx, args: EvalArguments, data: DataArguments) -> dict[str, Any]:
        from ..reward.evaluation import evaluate_reward_models

        specs = args.reward_models or [
            f"stage:{s}" for s in ("reward_pmp", "reward") if save_dir_exists(ctx.stage_dir(s))
        ]
        if not specs:
            raise RecipeError("Nothing to evaluate: no reward stage saved a model and 'reward_models' is empty.")
        names = args.preference_splits or (["preferences_id", "preferences_ood"] if data.on_testbed else ["test"])
        splits = {s: ctx.dataset(data, s) for s in names}
        return evaluate_reward_models(ctx, specs, splits, bootstrap_samples=args.bootstrap_samples, seed=args.seed)
