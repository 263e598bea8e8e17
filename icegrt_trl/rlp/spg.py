"""SPG — synthetic preference generation from the policy's own samples (RLP, Lang et al. 2024, §3.3).

Per instruction, the n sampled outputs are clustered by meaning (a :mod:`judge <icegrt_trl.rlp.judges>`);
confidence = |largest cluster| / n. An instruction is kept when confidence ≥ γ and another cluster exists:
chosen = the member of the largest cluster with the highest current reward, rejected = a random member of another
cluster (seeded). The clustering is greedy against cluster representatives (each output is compared with the first
member of every cluster so far), batched over instructions: the judge sees O(n · clusters) pairs per instruction,
not O(n²).
"""

from __future__ import annotations

import logging
import random
from typing import Any

from datasets import Dataset

from .judges import Judge, answer_text

logger = logging.getLogger(__name__)


def _validate(samples: Dataset, gamma: float) -> None:
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma={gamma} is the confidence threshold |largest cluster| / n and must lie in [0, 1] "
                         "(the RLP paper: 0.5).")
    missing = [c for c in ("prompt", "completions", "rewards") if c not in samples.column_names]
    if missing:
        raise ValueError(f"synthesize_preferences needs columns 'prompt', 'completions' (n per prompt) and 'rewards' "
                         f"(the current reward model's score of each); missing {missing}.")
    for i, row in enumerate(samples):
        if len(row["completions"]) != len(row["rewards"]):
            raise ValueError(f"Row {i}: {len(row['completions'])} completions but {len(row['rewards'])} rewards; "
                             "give one reward per completion.")
        if len(row["completions"]) < 2:
            raise ValueError(f"Row {i} has {len(row['completions'])} completion(s); SPG needs n ≥ 2 samples per "
                             "prompt to compare (the RLP paper samples n = 10).")


def cluster(questions: list[str], answers: list[list], judge: Judge) -> list[list[list[int]]]:
    """Greedy semantic clusters of each question's answers: ``result[q]`` is a list of clusters (answer indices)."""
    clusters: list[list[list[int]]] = [[] for _ in questions]
    width = max((len(a) for a in answers), default=0)
    for i in range(width):  # one round per answer index, batched over questions and clusters
        pairs = [(q, c) for q in range(len(questions)) if i < len(answers[q]) for c in range(len(clusters[q]))]
        verdicts = judge.same([questions[q] for q, _ in pairs],
                              [answers[q][i] for q, _ in pairs],
                              [answers[q][clusters[q][c][0]] for q, c in pairs]) if pairs else []
        joined: dict[int, int] = {}
        for (q, c), same in zip(pairs, verdicts):
            if same and q not in joined:
                joined[q] = c
        for q in range(len(questions)):
            if i >= len(answers[q]):
                continue
            if q in joined:
                clusters[q][joined[q]].append(i)
            else:
                clusters[q].append([i])
    return clusters


def synthesize_preferences(samples: Dataset, judge: Judge, gamma: float = 0.5, seed: int = 0,
                           report: dict | None = None) -> Dataset:
    """``samples``: ``prompt``, ``completions`` (n strings or n assistant-message lists), ``rewards`` (n floats).

    Returns a preference dataset in TRL's format: ``prompt``, ``chosen``, ``rejected`` (exactly as sampled) and
    ``confidence``. Empty completions are dropped before clustering (counted in ``report["empty_completions"]``);
    ``report`` also gets the number of prompts kept and dropped for low confidence or a single cluster.
    """
    _validate(samples, gamma)
    rng = random.Random(seed)
    prompts, answers, rewards, empties = [], [], [], 0
    for row in samples:
        keep = [j for j, c in enumerate(row["completions"]) if answer_text(c).strip()]
        empties += len(row["completions"]) - len(keep)
        prompts.append(row["prompt"])
        answers.append([row["completions"][j] for j in keep])
        rewards.append([float(row["rewards"][j]) for j in keep])
    questions = [answer_text(p) for p in prompts]
    clusters = cluster(questions, answers, judge)
    out: dict[str, list[Any]] = {"prompt": [], "chosen": [], "rejected": [], "confidence": []}
    low, single = 0, 0
    for prompt, ans, rew, groups, row in zip(prompts, answers, rewards, clusters, samples):
        n = len(row["completions"])
        if len(groups) < 2:
            single += 1
            continue
        # the largest cluster; ties go to the cluster holding the highest current reward
        largest = max(groups, key=lambda g: (len(g), max(rew[i] for i in g)))
        confidence = len(largest) / n
        if confidence < gamma:
            low += 1
            continue
        chosen = max(largest, key=lambda i: rew[i])
        others = [i for g in groups if g is not largest for i in g]
        out["prompt"].append(prompt)
        out["chosen"].append(ans[chosen])
        out["rejected"].append(ans[rng.choice(others)])
        out["confidence"].append(confidence)
    if report is not None:
        report.update({"prompts_in": len(samples), "pairs_out": len(out["prompt"]), "empty_completions": empties,
                       "dropped_low_confidence": low, "dropped_single_cluster": single})
    if empties:
        logger.warning("SPG dropped %d empty completion(s) before clustering.", empties)
    return Dataset.from_dict(out)
