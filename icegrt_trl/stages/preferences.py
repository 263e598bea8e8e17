"""sample_preferences stage: preference pairs from a model's own samples, ranked by the testbed's gold reward.

The way a real recipe gets reward-model data when no human labels exist for the model at hand: sample the model
(usually the policy PPO will start from) a few times per prompt, have a labeller rank two of the samples, and flip a
share of the labels to model the labeller's noise. Here the labeller is the testbed's gold reward. The pairs are
written as JSON lines in TRL's preference format (conversational when the prompts are), ``train.jsonl`` and
``test.jsonl`` under ``<output_dir>/sample_preferences/``; a later stage reads them with
``dataset_name: stage:sample_preferences`` (splits ``train`` and ``test``).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any, ClassVar

from trl import ModelConfig

from ..recipe import RecipeError
from ..reward.trainer import is_empty_completion
from .base import DataArguments, RunContext, Stage, documented
from .loading import load_model, load_tokenizer


@documented
@dataclass
class SamplePreferencesDataArguments(DataArguments):
    """Prompts to sample on (the testbed: its gold reward labels the pairs).

    Args:
        dataset_train_split: split of prompts (default: the testbed's unlabeled).
    """

    testbed_train_split: ClassVar[str] = "unlabeled"

    def __post_init__(self):
        if not self.on_testbed:
            raise ValueError("sample_preferences labels pairs with the testbed's gold reward: set dataset_name: "
                             "testbed (for your own data, label pairs with your judge and give the reward stage the "
                             "files).")


@documented
@dataclass
class SamplePreferencesArguments:
    """How the pairs are drawn.

    Args:
        num_prompts: use the first N prompts of the split (None: all).
        num_samples: samples per prompt; a pair takes two of them with different gold scores (a prompt whose samples
            all score the same gives no pair).
        temperature: sampling temperature (the model's own generation_config is set aside, as in PPO rollouts).
        max_new_tokens: new tokens per sample at most; an answer cut at this length is scored as it stands.
        sample_batch_size: sequences generated at once; lower it if sampling runs out of memory.
        label_noise: share of training pairs whose chosen and rejected are swapped (a noisy labeller), in [0, 0.5].
        test_size: share of the pairs written to test.jsonl, with clean labels (the reward stage's evaluation split),
            instead of train.jsonl. Sample in ModelConfig's dtype (bfloat16 is 2-4x faster on CPUs with AVX-512 BF16).
        seed: seed of sampling, pair choice and label noise.
    """

    num_prompts: int | None = None
    num_samples: int = 4
    temperature: float = 1.0
    max_new_tokens: int = 32
    sample_batch_size: int = 64
    label_noise: float = 0.2
    test_size: float = 0.1
    seed: int = 0

    def __post_init__(self):
        if self.num_samples < 2:
            raise ValueError(f"num_samples={self.num_samples}: a pair needs two samples of a prompt; use 2 or more.")
        if not 0.0 <= self.label_noise <= 0.5:
            raise ValueError(f"label_noise={self.label_noise} must lie in [0, 0.5] (0.5 makes the labels random).")
        if not 0.0 <= self.test_size < 1.0:
            raise ValueError(f"test_size={self.test_size} must lie in [0, 1).")


def pairs_from_samples(prompts: list, samples: list[list], scores: list[list[float]],
                       rng: random.Random) -> list[dict]:
    """One pair per prompt: two non-empty samples with different scores drawn at random, the higher one chosen. A
    prompt whose samples all score the same gives none. An empty sample (the model stopped at once) is never paired:
    the reward stage refuses empty completions, and there is no answer to prefer or reject."""
    rows = []
    for prompt, group, group_scores in zip(prompts, samples, scores):
        distinct = [(i, j) for i in range(len(group)) for j in range(i + 1, len(group))
                    if group_scores[i] != group_scores[j]
                    and not is_empty_completion(group[i]) and not is_empty_completion(group[j])]
        if not distinct:
            continue
        i, j = rng.choice(distinct)
        best, worst = (i, j) if group_scores[i] > group_scores[j] else (j, i)
        rows.append({"prompt": prompt, "chosen": group[best], "rejected": group[worst],
                     "score_chosen": group_scores[best], "score_rejected": group_scores[worst]})
    return rows


def flip_labels(rows: list[dict], rate: float, rng: random.Random) -> int:
    """Swap chosen and rejected (and their scores) of each row with probability `rate`, in place; returns how many."""
    flipped = 0
    for row in rows:
        if rng.random() < rate:
            row["chosen"], row["rejected"] = row["rejected"], row["chosen"]
            row["score_chosen"], row["score_rejected"] = row["score_rejected"], row["score_chosen"]
            flipped += 1
    return flipped


class SamplePreferencesStage(Stage):
    name = "sample_preferences"
    help = "Preference pairs from a model's own samples, ranked by the testbed's gold reward with label noise."
    config_classes = (ModelConfig, SamplePreferencesDataArguments, SamplePreferencesArguments)

    def run(self, ctx: RunContext, model_args: ModelConfig, data: SamplePreferencesDataArguments,
            args: SamplePreferencesArguments) -> dict[str, Any]:
        from ..rlp.sampling import sample_completions, score_samples
        from ..testbed import gold_reward

        prompts = list(ctx.dataset(data, data.train_split())["prompt"])
        prompts = prompts[: args.num_prompts] if args.num_prompts else prompts
        tokenizer = load_tokenizer(ctx, model_args.model_name_or_path)
        model = load_model(ctx, model_args, tokenizer, kind="causal", seed=args.seed)
        samples = sample_completions(model, tokenizer, prompts, args.num_samples, args.temperature,
                                     args.max_new_tokens, args.sample_batch_size, args.seed)
        del model
        scores = score_samples(gold_reward, prompts, samples)
        rng = random.Random(args.seed)
        rows = pairs_from_samples(prompts, samples, scores, rng)
        if not rows:
            raise RecipeError("sample_preferences: every prompt's samples got the same gold score, so no pair could "
                              "be formed. Raise num_samples or temperature.")
        rng.shuffle(rows)
        n_test = int(round(len(rows) * args.test_size))
        flipped = flip_labels(rows[n_test:], args.label_noise, rng)  # the test pairs keep clean labels
        out = ctx.stage_dir(self.name)
        out.mkdir(parents=True, exist_ok=True)
        for split, part in (("train", rows[n_test:]), ("test", rows[:n_test])):
            with open(out / f"{split}.jsonl", "w") as f:
                for row in part:
                    f.write(json.dumps(row) + "\n")
        flat = [s for group in scores for s in group]
        return {"model": model_args.model_name_or_path, "prompts": len(prompts), "samples": len(flat),
                "empty_samples": sum(is_empty_completion(c) for group in samples for c in group),
                "mean_gold_of_samples": round(sum(flat) / len(flat), 4), "pairs": len(rows),
                "train_pairs": len(rows) - n_test, "test_pairs": n_test,
                "label_noise_realized": round(flipped / max(1, len(rows) - n_test), 4)}


__all__ = ["SamplePreferencesArguments", "SamplePreferencesStage", "flip_labels", "pairs_from_samples"]
