"""Reward-model evaluation: pairwise accuracy with bootstrap confidence intervals on any number of preference sets.

Entry point for ``icegrt-trl eval`` (reward mode)::

    results = evaluate_reward_model(model, tokenizer, {"id": ds_id, "ood": ds_ood})
    write_reward_eval(results, output_dir, model_dir=path_of_the_rm)   # JSON + a model-card section

Accuracy counts a tie as one half (a reward model that outputs constants scores 0.5, not 0). The interval is the
percentile bootstrap over pairs: it says how much the figure would move on another draw of the same number of pairs,
which is what matters when comparing two reward models on a few hundred pairs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from ..cards import update_card_section


def pairwise_scores(rewards_chosen, rewards_rejected) -> np.ndarray:
    """Per pair: 1 if chosen scores higher, 0.5 on a tie, 0 otherwise."""
    c, r = np.asarray(rewards_chosen, dtype=float), np.asarray(rewards_rejected, dtype=float)
    return np.where(c > r, 1.0, np.where(c == r, 0.5, 0.0))


def bootstrap_ci(values, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (resampling the values with replacement)."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        raise ValueError("bootstrap_ci needs at least one value.")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence} must lie in (0, 1).")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(n_resamples, values.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def _texts(tokenizer, prompts, completions) -> list[str]:
    """The same sequences the RewardTrainer trains on: prompt + completion + EOS, or the chat template."""
    out = []
    for p, c in zip(prompts, completions):
        if isinstance(c, list):
            out.append(tokenizer.apply_chat_template((p or []) + c, tokenize=False))
        else:
            text = (p or "") + c
            out.append(text if text.endswith(tokenizer.eos_token) else text + tokenizer.eos_token)
    return out


@torch.no_grad()
def score_completions(model, tokenizer, prompts, completions, batch_size: int = 64,
                      max_length: int | None = None) -> list[float]:
    """Reward of each (prompt, completion); works for GRM models and TRL sequence classifiers (right padding,
    which both read correctly; GRM models read left padding too)."""
    texts = _texts(tokenizer, prompts, completions)
    was_training = model.training
    model.eval()
    side, tokenizer.padding_side = tokenizer.padding_side, "right"
    device = next(model.parameters()).device
    rewards: list[float] = []
    try:
        for i in range(0, len(texts), batch_size):
            batch = tokenizer(texts[i:i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False,
                              truncation=max_length is not None, max_length=max_length).to(device)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            rewards.extend(logits.float().reshape(-1).tolist())
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return rewards


def evaluate_reward_model(model, tokenizer, datasets, batch_size: int = 64, n_resamples: int = 1000,
                          confidence: float = 0.95, seed: int = 0, max_length: int | None = None) -> dict[str, dict]:
    """Pairwise accuracy of a reward model on each preference dataset (``prompt``/``chosen``/``rejected``).

    `datasets` is a mapping name → dataset (or a single dataset, named ``"eval"``). Returns, per name:
    ``accuracy``, ``ci_low``, ``ci_high`` (percentile bootstrap, `confidence`), ``n`` pairs, ``ties`` and
    ``mean_margin`` (mean r_c − r_r).
    """
    if not isinstance(datasets, Mapping):
        datasets = {"eval": datasets}
    results = {}
    for name, ds in datasets.items():
        missing = [c for c in ("chosen", "rejected") if c not in ds.column_names]
        if missing:
            raise ValueError(f"Preference dataset {name!r} lacks column(s) {missing}; found {ds.column_names}.")
        prompts = ds["prompt"] if "prompt" in ds.column_names else [None] * len(ds)
        rc = score_completions(model, tokenizer, prompts, ds["chosen"], batch_size, max_length)
        rr = score_completions(model, tokenizer, prompts, ds["rejected"], batch_size, max_length)
        scores = pairwise_scores(rc, rr)
        low, high = bootstrap_ci(scores, n_resamples, confidence, seed)
        results[name] = {"accuracy": float(scores.mean()), "ci_low": low, "ci_high": high, "n": int(scores.size),
                         "ties": int((scores == 0.5).sum()), "mean_margin": float(np.mean(np.subtract(rc, rr))),
                         "confidence": confidence}
    return results


def reward_eval_markdown(results: dict[str, dict], title: str = "Reward-model evaluation") -> str:
    """A markdown table of `evaluate_reward_model`'s results."""
    conf = next(iter(results.values()), {}).get("confidence", 0.95)
    lines = [f"## {title}", "", f"| dataset | pairs | accuracy | {conf:.0%} CI (bootstrap) | ties |",
             "| --- | ---: | ---: | --- | ---: |"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['n']} | {r['accuracy']:.3f} | [{r['ci_low']:.3f}, {r['ci_high']:.3f}] | "
                     f"{r['ties']} |")
    return "\n".join(lines) + "\n"


def write_reward_eval(results: dict[str, dict], output_dir, model_dir=None, title: str = "Reward-model evaluation",
                      key: str = "reward-eval") -> dict:
    """Write ``reward_eval.json`` and a markdown report under `output_dir`, and the same table as a section of the
    model card (``model_dir/README.md``) when `model_dir` is given. Returns `results` (for the run report)."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "reward_eval.json").write_text(json.dumps(results, indent=2))
    (out / "reward_eval.md").write_text(reward_eval_markdown(results, title))
    if model_dir is not None:
        update_card_section(model_dir, key, reward_eval_markdown(results, title))
    return results


def load_reward_model(path, head_type: str | None = None, **kwargs):
    """Load a saved reward model (GRM or sequence classifier) and its tokenizer: the one-liner for `eval`/PPO."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, PretrainedConfig

    from .modeling import GRMConfig, GRMRewardModel

    config_dict, _ = PretrainedConfig.get_config_dict(str(path))
    if config_dict.get("model_type") == GRMConfig.model_type:
        model = GRMRewardModel.from_pretrained(path, head_type=head_type, **kwargs)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
    return model, AutoTokenizer.from_pretrained(path)


__all__ = ["bootstrap_ci", "evaluate_reward_model", "evaluate_reward_models", "flatten_results", "load_reward_model", "pairwise_scores", "reward_eval_markdown",
           "score_completions", "write_reward_eval"]


def evaluate_reward_models(ctx, specs: list[str], splits: dict, bootstrap_samples: int = 1000, seed: int = 0,
                           batch_size: int = 64) -> dict:
    """Reward mode of the ``eval`` stage: each model spec (``stage:reward``, a folder) on each preference split.

    Writes ``reward_eval.json``/``.md`` under ``<run>/eval/<spec>/`` and the table into each model's card; returns flat
    figures for the run report: ``<spec>/<split>/accuracy``, ``…/ci_low``, ``…/ci_high``, ``…/n``.
    """
    figures: dict = {}
    for spec in specs:
        path = ctx.resolve_path(spec)
        model, tokenizer = load_reward_model(path)
        results = evaluate_reward_model(model, tokenizer, splits, batch_size=batch_size, n_resamples=bootstrap_samples,
                                        seed=seed)
        safe = spec.replace(":", "-").replace("/", "_")
        write_reward_eval(results, ctx.stage_dir("eval") / safe, model_dir=path)
        figures.update(flatten_results(results, prefix=f"{spec}/"))
    return figures


def flatten_results(results: dict[str, dict], prefix: str = "") -> dict:
    """``{split: {accuracy, ci_low, ci_high, n}}`` → ``{prefix+split/accuracy: …}`` (rounded) for reports."""
    out = {}
    for split, r in results.items():
        for key in ("accuracy", "ci_low", "ci_high"):
            out[f"{prefix}{split}/{key}"] = round(r[key], 4)
        out[f"{prefix}{split}/n"] = r["n"]
    return out
