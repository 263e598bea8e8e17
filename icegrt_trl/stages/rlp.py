"""RLP stage: reward learning on policy (Lang et al. 2024), then PPO again from the SFT policy.

1. sample n outputs per instruction of the unlabeled set from the PPO policy (temperature 1.0);
2. per method — ``spg``: score them with the current reward model, synthesize preference pairs from their semantic
   clusters and retrain the reward model on D ∪ D̂; ``uml``: retrain it on D with the UML loss on the samples;
   the retrained model starts from the same initialization as the first one (the recipe's ``reward`` section);
3. PPO again from the SFT policy with the new reward model (the recipe's ``ppo`` section).

Each method writes to ``<output_dir>/rlp_<method>/`` (``reward/``, ``ppo/``, ``samples.jsonl``, ``pairs.jsonl``).
On the testbed the stage also measures what RLP is for: the reward model's accuracy on gold-labelled pairs of the
PPO policy's own samples of held-out prompts, before and after the refit.
"""

from __future__ import annotations

import json
from functools import partial
from dataclasses import dataclass, field
from typing import Any

from datasets import Dataset
from trl import ModelConfig

from ..recipe import RecipeError
from .base import LOAD_DTYPES, RunContext, Stage, documented
from .loading import load_model, load_tokenizer

METHODS = ("uml", "spg")


@documented
@dataclass
class RLPArguments:
    """Reward learning on policy.

    Args:
        methods: which refits to run, in order: uml, spg or both (each writes <output_dir>/rlp_<method>/; the samples
            are drawn once and shared).
        policy_path: the policy whose samples refit the reward model (the paper: the PPO policy).
        reward_model_path: the reward model being refit: its scores rank SPG's chosen answers, and the refit
            starts from the same initialization as it did (the recipe's reward section).
        unlabeled_split: instructions U to sample on (default: the ppo section's training split — the testbed's
            unlabeled, else train; the paper: 20k instructions).
        num_prompts: use the first N instructions of U (None: all).
        num_samples: outputs sampled per instruction (the paper: 10).
        sample_temperature: sampling temperature (the paper: 1.0).
        max_new_tokens: length budget of each sample (default: the ppo section's response_length).
        sample_batch_size: sequences generated at once; lower it if sampling runs out of memory (results do not change).
        dtype: dtype the policy samples in (auto: as saved; bfloat16 is 2-4x faster on CPUs with AVX-512 BF16).
        judge: SPG's semantic-equivalence judge: exact (normalized exact match; on the testbed after parsing the
            answer), embedding (cosine of sentence embeddings, offline all-MiniLM-L6-v2) or nli (bidirectional
            entailment with an NLI cross-encoder, e.g. cross-encoder/nli-deberta-v3-large; give a local folder).
        judge_model: model of the embedding or nli judge (default: their documented defaults).
        judge_mode: nli judge rule: strict (entailment both ways) or loose (no contradiction either way).
        judge_threshold: embedding judge's cosine threshold.
        gamma: SPG confidence threshold |largest cluster| / n (the paper: 0.5).
        uml_lam: weight λ of the UML loss (the paper: 0.5).
        uml_beta: β of the SKL term after the warm-up (Federici et al.: 1).
        uml_beta_warmup_steps: optimizer steps over which β rises log-linearly from 1e-3 (0: constant β).
        uml_z_dim: size of the UML representation z (Federici et al.: 64).
        measure_split: testbed split of held-out prompts on which the reward model's accuracy on the policy's own
            samples is measured before and after the refit (None: skip).
        measure_num_prompts: prompts of measure_split used for that.
        seed: seed of sampling and of SPG's rejected answers.
        run_name: a suffix for the output folders, rlp_<method>_<run_name>/ (ablations beside the main run).
        refit_seed: seed of the refit reward model (default: the reward section's seed, i.e. the same
            initialization as the first reward model, as in the paper).
    """

    methods: list[str] = field(default_factory=lambda: ["spg"])
    policy_path: str = "stage:ppo"
    reward_model_path: str = "stage:reward"
    unlabeled_split: str | None = None
    num_prompts: int | None = None
    num_samples: int = 10
    sample_temperature: float = 1.0
    max_new_tokens: int | None = None
    sample_batch_size: int = 256
    dtype: str = "auto"
    judge: str = "exact"
    judge_model: str | None = None
    judge_mode: str = "strict"
    judge_threshold: float = 0.9
    gamma: float = 0.5
    uml_lam: float = 0.5
    uml_beta: float = 1.0
    uml_beta_warmup_steps: int = 0
    uml_z_dim: int = 64
    measure_split: str | None = "eval"
    measure_num_prompts: int = 200
    seed: int = 0
    run_name: str | None = None
    refit_seed: int | None = None

    def __post_init__(self):
        if isinstance(self.methods, str):
            self.methods = [m.strip() for m in self.methods.split(",") if m.strip()]
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ValueError(f"methods={self.methods} must name one or more of {list(METHODS)}.")
        if self.num_samples < 2:
            raise ValueError(f"num_samples={self.num_samples}: RLP compares samples of the same instruction, so it "
                             "needs at least 2 (the paper: 10).")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma={self.gamma} must lie in [0, 1] (the paper: 0.5).")
        if self.judge not in ("exact", "embedding", "nli"):
            raise ValueError(f"judge={self.judge!r} must be 'exact', 'embedding' or 'nli'.")
        if self.uml_lam < 0:
            raise ValueError(f"uml_lam={self.uml_lam} must be >= 0.")
        if self.dtype not in LOAD_DTYPES:
            raise ValueError(f"dtype={self.dtype!r} must be auto, float32, bfloat16 or float16.")


class RLPStage(Stage):
    name = "rlp"
    help = ("Reward learning on policy (RLP): sample the PPO policy, refit the reward model on its samples (UML "
            "and/or SPG), then PPO again from SFT.")
    config_classes = (RLPArguments,)

    def run(self, ctx: RunContext, args: RLPArguments) -> dict[str, Any]:
        from ..cli import parse_stage_configs
        from ..reward.evaluation import load_reward_model, score_completions
        from ..rlp import UMLLoss, build_judge, synthesize_preferences
        from ..rlp.sampling import sample_completions, score_samples
        from . import get_stage
        from .ppo import run_ppo
        from .reward import train_reward_model

        reward_stage, ppo_stage = get_stage("reward"), get_stage("ppo")
        # the recipe's reward and ppo sections, with the pipeline's --reward.* / --ppo.* overrides
        reward_cfg = parse_stage_configs(reward_stage, ctx.recipe, ctx, ctx.overrides.get("reward", []))
        ppo_cfg = parse_stage_configs(ppo_stage, ctx.recipe, ctx, ctx.overrides.get("ppo", []))
        ppo_args, data = ppo_cfg[2], ppo_cfg[1]
        on_testbed = data.dataset_name == "testbed"
        max_new = args.max_new_tokens or ppo_args.response_length
        judge_kwargs = {"exact": {}, "embedding": {"threshold": args.judge_threshold},
                        "nli": {"mode": args.judge_mode}}[args.judge]
        if args.judge_model:
            judge_kwargs["model_name_or_path"] = args.judge_model
        if args.judge == "exact" and on_testbed:
            judge_kwargs["extract"] = _testbed_answer_reader(ctx.testbed_config().suite)
        judge = build_judge(args.judge, **judge_kwargs) if "spg" in args.methods else None

        # 1. samples of the policy on U (and on held-out prompts, to measure the reward model where PPO samples)
        tokenizer = load_tokenizer(ctx, args.policy_path)
        policy = load_model(ctx, ModelConfig(model_name_or_path=args.policy_path, dtype=args.dtype), tokenizer,
                            kind="causal")
        split = args.unlabeled_split or data.train_split()
        unlabeled = ctx.dataset(data, split)
        if "prompt" not in unlabeled.column_names or len(unlabeled) == 0:
            raise RecipeError(f"rlp: the split {split!r} has no prompts to sample on.")
        prompts = list(unlabeled["prompt"])[: args.num_prompts] if args.num_prompts else list(unlabeled["prompt"])
        completions = sample_completions(policy, tokenizer, prompts, args.num_samples, args.sample_temperature,
                                         max_new, args.sample_batch_size, args.seed)
        measure = None
        if args.measure_split and on_testbed:
            held_out = list(ctx.testbed()[args.measure_split]["prompt"])[: args.measure_num_prompts]
            measure = (held_out, sample_completions(policy, tokenizer, held_out, 4, args.sample_temperature, max_new,
                                                    args.sample_batch_size, args.seed + 1))
        del policy
        rm, rm_tok = load_reward_model(ctx.resolve_path(args.reward_model_path))
        n = args.num_samples
        rewards = score_samples(partial(score_completions, rm, rm_tok), prompts, completions)
        samples = Dataset.from_dict({"prompt": prompts, "completions": completions, "rewards": rewards})
        figures: dict[str, Any] = {"policy": args.policy_path, "prompts": len(prompts), "samples_per_prompt": n}
        if measure is not None:
            figures["rm_accuracy_on_policy_samples/before"], figures["policy_sample_pairs"] = \
                _accuracy_on_samples(rm, rm_tok, *measure)
        del rm

        # 2–3. refit and PPO again, per method
        for method in args.methods:
            out = ctx.output_dir / (f"rlp_{method}" + (f"_{args.run_name}" if args.run_name else ""))
            out.mkdir(parents=True, exist_ok=True)
            _write_jsonl(out / "samples.jsonl", samples)
            model_args, rdata, rargs, margs = _fresh(reward_cfg)
            rargs.output_dir = str(out / "reward" / "checkpoints")
            if args.refit_seed is not None:
                rargs.seed = args.refit_seed
            suffix = f"-rlp-{method}" + (f"-{args.run_name}" if args.run_name else "")
            if rargs.push_to_hub:  # beside the first reward model's repo, not over it
                rargs.hub_model_id = f"{rargs.hub_model_id or 'reward'}{suffix}"
            if method == "spg":
                report: dict = {}
                pairs = synthesize_preferences(samples, judge, gamma=args.gamma, seed=args.seed, report=report)
                _write_jsonl(out / "pairs.jsonl", pairs)
                figures.update({f"spg/{k}": v for k, v in report.items()})
                rm_figures = train_reward_model(ctx, model_args, rdata, rargs, margs, out / "reward",
                                                extra_train=pairs)
            else:
                uml = UMLLoss(samples.remove_columns("rewards"), lam=args.uml_lam, beta=args.uml_beta,
                              beta_warmup_steps=args.uml_beta_warmup_steps, z_dim=args.uml_z_dim, seed=args.seed)
                rm_figures = train_reward_model(ctx, model_args, rdata, rargs, margs, out / "reward",
                                                loss_plugins=[uml])
            figures.update({f"{method}/reward/{k}": v for k, v in rm_figures.items() if not isinstance(v, str)})
            if measure is not None:
                new_rm, new_tok = load_reward_model(out / "reward")
                figures[f"rm_accuracy_on_policy_samples/after_{method}"] = \
                    _accuracy_on_samples(new_rm, new_tok, *measure)[0]
                del new_rm
            pm, pdata, pargs, preward, pjudge = _fresh(ppo_cfg)
            pm.model_name_or_path = ppo_cfg[0].model_name_or_path or "stage:sft"  # PPO again from the SFT policy
            pargs.reward_model_path = str(out / "reward")
            if pargs.push_to_hub:
                pargs.hub_model_id = f"{pargs.hub_model_id or 'ppo'}{suffix}"
            ppo_figures = run_ppo(ctx, pm, pdata, pargs, preward, pjudge, out / "ppo", checkpoints_in_out=True)
            figures.update({f"{method}/ppo/{k}": v for k, v in ppo_figures.items()
                            if k not in ("model", "reward", "prompts")})
        return figures


def _fresh(configs: tuple) -> tuple:
    """Copies of parsed stage configs (each refit and PPO run gets its own, unmutated by the previous one)."""
    import copy

    return tuple(copy.deepcopy(c) for c in configs)


def _testbed_answer(text: str):
    """The testbed's answer as the gold reward reads it (digits and words), so "1 2 3" == "the answer is 1 2 3"
    only when the parsed answers agree."""
    from ..testbed.tasks import parse_answer

    return tuple(parse_answer(text))


def _testbed_answer_reader(suite: str):
    """The exact-match judge's answer extractor for the testbed suite: digit answers, or a chat answer's numbers."""
    if suite == "chat":
        from ..testbed.chat_tasks import extract_chat_answer

        return extract_chat_answer
    return _testbed_answer


def _accuracy_on_samples(rm, tok, prompts, completions) -> tuple[float, int]:
    from ..reward.evaluation import score_completions
    from ..rlp.sampling import pairwise_accuracy_on_samples, score_samples
    from ..testbed import gold_reward

    gold = score_samples(gold_reward, prompts, completions)
    scores = score_samples(partial(score_completions, rm, tok), prompts, completions)
    acc, pairs = pairwise_accuracy_on_samples(gold, scores)
    return round(acc, 4), pairs


def _write_jsonl(path, dataset: Dataset) -> None:
    with open(path, "w") as f:
        for row in dataset:
            f.write(json.dumps(row, default=str) + "\n")
