"""The gold judge: how good is a policy by the hidden gold reward.

`mean_gold_score` is the testbed's absolute metric; `win_rate_of_completions` is the AlpacaFarm-style pairwise
metric of the RLP paper (ties count one half), here exact because the judge is the gold reward itself.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .tasks import gold_reward


def render_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list) -> list[str]:
    """Text prompts stay as they are; chat prompts go through the chat template with a generation prompt."""
    return [
        tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) if isinstance(p, list) else p
        for p in prompts
    ]


@torch.no_grad()
def generate_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list,
    max_new_tokens: int = 16,
    batch_size: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    num_return_sequences: int = 1,
    seed: int | None = None,
) -> list[str]:
    """Completions of `model` for `prompts` (greedy by default), decoded without special tokens.

    Returns ``len(prompts) * num_return_sequences`` strings, grouped by prompt.
    """
    from ..ppo.modeling import contiguous_lm_head_input

    contiguous_lm_head_input(model)  # a bf16 model's prefill would otherwise copy its LM head once per row on a CPU
    if seed is not None:
        torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    texts = render_prompts(tokenizer, prompts)
    out = []
    try:
        for i in range(0, len(texts), batch_size):
            batch = tokenizer(texts[i:i + batch_size], return_tensors="pt", padding=True,
                              add_special_tokens=False).to(model.device)
            generated = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                temperature=temperature if do_sample else None,
                top_p=None,
                top_k=None,
                num_return_sequences=num_return_sequences,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            new_tokens = generated[:, batch["input_ids"].shape[1]:]
            out.extend(" " + t for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return out


def mean_gold_score(model, tokenizer, prompts: list, **generate_kwargs) -> float:
    """Mean gold reward of the policy's (greedy by default) completions on `prompts`."""
    completions = generate_completions(model, tokenizer, prompts, **generate_kwargs)
    scores = gold_reward(prompts, completions)
    return sum(scores) / len(scores)


def win_rate_of_completions(prompts: list, completions_a: list, completions_b: list) -> float:
    """Share of prompts where A's completion has the higher gold score; ties count 1/2."""
    if not (len(prompts) == len(completions_a) == len(completions_b)):
        raise ValueError("win_rate needs one completion of A and one of B per prompt.")
    a, b = gold_reward(prompts, completions_a), gold_reward(prompts, completions_b)
    return sum(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b)) / len(prompts)

