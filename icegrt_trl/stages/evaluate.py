"""Eval stage: judge policies by the gold reward (policy mode) or reward models by pairwise accuracy (reward mode)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trl import ModelConfig

from ..recipe import RecipeError
from .base import LOAD_DTYPES, DataArguments, RunContext, Stage, documented
from .judge import JudgeArguments, eval_prompts
from ..policy_eval import response_lengths, sampled_kl
from ..testbed import generate_completions, gold_reward, win_rate_of_completions
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
        bootstrap_samples: resamples of the confidence intervals (gold score and exact match in policy mode,
            accuracy in reward mode).
        kl_num_prompts: policy mode (which also writes every greedy completion with its gold score to
            <output_dir>/eval/samples.jsonl, the first few per policy to report.md): eval prompts on which KL(policy ‖ reference_policy) is estimated from one
            temperature-1 sample each (0: skip).
        dtype: dtype the policies are loaded in for judging (auto: as saved; bfloat16 is faster on CPUs with
            AVX-512 BF16 and on GPUs).
        seed: seed of the bootstrap and of the KL samples.
    """

    mode: str = "policy"
    policies: list[str] = field(default_factory=list)
    reference_policy: str = "stage:sft"
    reward_models: list[str] = field(default_factory=list)
    preference_splits: list[str] = field(default_factory=list)
    bootstrap_samples: int = 1000
    kl_num_prompts: int = 64
    dtype: str = "auto"
    seed: int = 0

    def __post_init__(self):
        if self.mode not in ("policy", "reward"):
            raise ValueError(f"EvalArguments.mode must be 'policy' or 'reward', got {self.mode!r}.")
        if self.dtype not in LOAD_DTYPES:
            raise ValueError(f"EvalArguments.dtype={self.dtype!r} must be one of {LOAD_DTYPES}.")


SAMPLES_FILE = "samples.jsonl"


def write_samples(folder, samples: list[dict]) -> None:
    """Every judged completion, one JSON line each (policy, prompt, completion, gold)."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / SAMPLES_FILE, "w") as f:
        for row in samples:
            f.write(json.dumps(row, default=str) + "\n")


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
        specs = args.policies or [f"stage:{s}" for s in POLICY_STAGES if save_dir_exists(ctx.stage_dir(s))]
        if not specs:
            raise RecipeError("Nothing to evaluate: no policy stage has saved a model in this run, and "
                              "'policies' is empty. Run a policy stage first or list policies.")
        if not args.policies:
            init = ctx.results.get("sft", {}).get("model")  # the model the SFT stage started from
            if init and init.startswith("testbed:"):
                specs.insert(0, init)
        for spec in specs + [args.reference_policy]:  # every model exists, before any is loaded
            ctx.resolve_path(spec)
        # the reference first (judged too: every other figure is read against it), then the others in order
        specs = [args.reference_policy] + [s for s in specs if s != args.reference_policy]
        prompts = eval_prompts(ctx, judge)
        tokenizer = load_tokenizer(ctx, args.reference_policy)
        reference = self._load(ctx, args, args.reference_policy, tokenizer)
        figures: dict[str, Any] = {"num_prompts": len(prompts), "reference_policy": args.reference_policy}
        completions, gold, samples = {}, {}, []
        for spec in specs:  # the reference comes first: the others are compared with its completions and scores
            model = reference if spec == args.reference_policy else self._load(ctx, args, spec, tokenizer)
            completions[spec] = generate_completions(model, tokenizer, prompts, max_new_tokens=judge.judge_max_new_tokens)
            gold[spec] = gold_reward(prompts, completions[spec])
            figures.update(self._figures(spec, prompts, completions, gold, args, tokenizer))
            if spec != args.reference_policy and args.kl_num_prompts:
                kl = sampled_kl(model, reference, tokenizer, prompts[: args.kl_num_prompts],
                                max_new_tokens=judge.judge_max_new_tokens, seed=args.seed)
                figures[f"{spec}/kl_vs_reference"] = round(kl["kl"], 4)
            samples += [{"policy": spec, "prompt": p, "completion": c, "gold": g}
                        for p, c, g in zip(prompts, completions[spec], gold[spec])]
            del model
        write_samples(ctx.stage_dir(self.name), samples)
        return figures

    @staticmethod
    def _load(ctx, args: EvalArguments, spec: str, tokenizer):
        return load_model(ctx, ModelConfig(model_name_or_path=spec, dtype=args.dtype), tokenizer, kind="causal",
                          seed=args.seed)

    @staticmethod
    def _figures(spec, prompts, completions: dict, gold: dict, args: EvalArguments, tokenizer) -> dict[str, Any]:
        """Figures of policy `spec` from the completions and gold scores of every policy judged so far."""
        from ..reward.evaluation import bootstrap_ci

        scores, ref = gold[spec], args.reference_policy
        exact = [float(s == 1.0) for s in scores]
        out: dict[str, Any] = {}
        for name, values in (("gold_score", scores), ("exact_match", exact)):
            low, high = bootstrap_ci(values, n_resamples=args.bootstrap_samples, seed=args.seed)
            out[f"{spec}/{name}"] = round(sum(values) / len(values), 4)
            out[f"{spec}/{name}_ci95"] = f"[{low:.3f}, {high:.3f}]"
        lengths = response_lengths(tokenizer, completions[spec])
        out[f"{spec}/response_tokens"] = round(sum(lengths) / len(lengths), 2)
        if spec != ref:
            out[f"{spec}/win_rate_vs_{ref}"] = round(
                win_rate_of_completions(prompts, completions[spec], completions[ref]), 4)
            # paired over prompts: the interval of the gain itself, narrower than comparing two intervals
            diffs = [a - b for a, b in zip(scores, gold[ref])]
            low, high = bootstrap_ci(diffs, n_resamples=args.bootstrap_samples, seed=args.seed)
            out[f"{spec}/gold_gain_vs_{ref}"] = round(sum(diffs) / len(diffs), 4)
            out[f"{spec}/gold_gain_vs_{ref}_ci95"] = f"[{low:.3f}, {high:.3f}]"
        return out

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
