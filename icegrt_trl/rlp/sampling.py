"""Sampling n outputs per instruction from a policy, and measuring a reward model on the policy's own samples."""

from __future__ import annotations

from itertools import combinations
from typing import Callable

import torch
from datasets import Dataset

from ..ppo.core import truncate_at_stop
from ..ppo.data import decode_completions, is_conversational_prompt, left_pad, prepare_prompt_dataset
from ..ppo.generation import generate_rollouts, rollout_generation_config


@torch.no_grad()
def sample_completions(model, tokenizer, prompts: list, n: int, temperature: float = 1.0, max_new_tokens: int = 16,
                       batch_size: int = 64, seed: int = 0, stop_token_ids: list[int] | None = None,
                       progress: bool = True) -> list[list]:
    """``n`` samples per prompt (temperature sampling with these settings only; the model's own generation_config is
    set aside, as in PPO rollouts). Text prompts get strings, conversational prompts assistant-message lists."""
    if n < 1:
        raise ValueError(f"num_samples={n} must be >= 1.")
    rows = prepare_prompt_dataset(Dataset.from_dict({"prompt": list(prompts)}), tokenizer, None, name="prompts")
    ids = [list(x) for x in rows["input_ids"]]
    stop = stop_token_ids or [tokenizer.eos_token_id]
    gen = rollout_generation_config(max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature,
                                    pad_token_id=tokenizer.pad_token_id, stop_token_ids=stop)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    per_batch = max(1, batch_size // n)
    starts = range(0, len(ids), per_batch)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=f"Sampling {n} outputs per prompt", unit="batch")
    torch.manual_seed(seed)
    out: list[list] = []
    try:
        for start in starts:
            chunk = [p for p in ids[start:start + per_batch] for _ in range(n)]
            q, m = left_pad(chunk, tokenizer.pad_token_id)
            width = q.shape[1]
            seq = generate_rollouts(model, q.to(device), m.to(device), gen)
            resp, mask, _ = truncate_at_stop(seq[:, width:].cpu(), stop, tokenizer.pad_token_id)
            texts = decode_completions(tokenizer, chunk, [r[: int(k)].tolist() for r, k in zip(resp, mask.sum(1))])
            for j in range(0, len(texts), n):
                out.append(texts[j:j + n])
    finally:
        model.train(was_training)
    if prompts and is_conversational_prompt(prompts[0]):
        out = [[[{"role": "assistant", "content": t.strip()}] for t in group] for group in out]
    return out


def score_samples(score: Callable[[list, list], list[float]], prompts: list, completions: list[list]) -> list[list]:
    """Apply a flat scorer ``score(prompts, completions) -> floats`` to each prompt's group of samples, in one call,
    and regroup the scores per prompt."""
    flat_p = [p for p, group in zip(prompts, completions) for _ in group]
    flat = score(flat_p, [c for group in completions for c in group])
    out, i = [], 0
    for group in completions:
        out.append(flat[i:i + len(group)])
        i += len(group)
    return out


def pairwise_accuracy_on_samples(gold: list[list[float]], scores: list[list[float]]) -> tuple[float, int]:
    """How often a reward model orders two samples of the same prompt as the gold reward does.

    Every pair (i, j) of one prompt's samples with different gold scores counts; a reward tie counts ½. Returns
    (accuracy, number of pairs)."""
    right, pairs = 0.0, 0
    for g, s in zip(gold, scores):
        for i, j in combinations(range(len(g)), 2):
            if g[i] == g[j]:
                continue
            pairs += 1
            if s[i] == s[j]:
                right += 0.5
            elif (s[i] > s[j]) == (g[i] > g[j]):
                right += 1.0
    return (right / pairs if pairs else float("nan")), pairs
