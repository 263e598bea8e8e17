"""Figures of a policy beyond its gold score: how far it moved from a reference (KL) and how long it answers.

``sampled_kl`` is the Monte-Carlo estimate KL(π‖π_ref) = E_{y~π}[log π(y|x) − log π_ref(y|x)], summed over the
response's tokens and averaged over prompts — the quantity PPO's KL penalty controls, measured on held-out prompts
with plain temperature-1 sampling (the model's own generation_config set aside).
"""

from __future__ import annotations

import torch
from datasets import Dataset

from .ppo.core import truncate_at_stop
from .ppo.data import left_pad, prepare_prompt_dataset
from .ppo.generation import generate_rollouts, rollout_generation_config


def sequence_logprob(model, sequences: torch.Tensor, attention_mask: torch.Tensor, context_length: int,
                     response_mask: torch.Tensor) -> torch.Tensor:
    """Σ_t log p(y_t | x, y_<t) over each row's response tokens (positions ≥ `context_length` where the mask is 1)."""
    position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
    logits = model(input_ids=sequences, attention_mask=attention_mask, position_ids=position_ids).logits
    logits = logits[:, context_length - 1:-1].float()
    tokens = sequences[:, context_length:]
    logp = torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return (logp * response_mask).sum(1)


@torch.no_grad()
def sampled_kl(policy, reference, tokenizer, prompts: list, max_new_tokens: int = 32, batch_size: int = 32,
               seed: int = 0) -> dict[str, float]:
    """KL(policy ‖ reference) in nats per response, estimated from one temperature-1 sample of `policy` per prompt.

    Returns ``{"kl": mean, "kl_std": standard deviation over prompts, "sampled_length": mean response tokens}``.
    """
    rows = prepare_prompt_dataset(Dataset.from_dict({"prompt": list(prompts)}), tokenizer, None, name="prompts")
    ids = [list(x) for x in rows["input_ids"]]
    stop = [tokenizer.eos_token_id]
    gen = rollout_generation_config(max_new_tokens=max_new_tokens, do_sample=True, temperature=1.0,
                                    pad_token_id=tokenizer.pad_token_id, stop_token_ids=stop)
    device = next(policy.parameters()).device
    modes = (policy.training, reference.training)
    policy.eval()
    reference.eval()
    torch.manual_seed(seed)
    kls, lengths = [], []
    try:
        for start in range(0, len(ids), batch_size):
            q, m = left_pad(ids[start:start + batch_size], tokenizer.pad_token_id)
            q, m = q.to(device), m.to(device)
            seq = generate_rollouts(policy, q, m, gen)
            width = q.shape[1]
            resp, resp_mask, _ = truncate_at_stop(seq[:, width:], stop, tokenizer.pad_token_id)
            full = torch.cat([q, resp], 1)
            full_mask = torch.cat([m, resp_mask.to(m.dtype)], 1)
            diff = (sequence_logprob(policy, full, full_mask, width, resp_mask)
                    - sequence_logprob(reference, full, full_mask, width, resp_mask))
            kls.extend(diff.tolist())
            lengths.extend(resp_mask.sum(1).tolist())
    finally:
        policy.train(modes[0])
        reference.train(modes[1])
    kl = torch.tensor(kls)
    return {"kl": float(kl.mean()), "kl_std": float(kl.std()) if len(kls) > 1 else 0.0,
            "sampled_length": sum(lengths) / len(lengths)}


def response_lengths(tokenizer, completions: list[str]) -> list[int]:
    """Token counts of completion texts (without special tokens)."""
    return [len(tokenizer(c.strip(), add_special_tokens=False)["input_ids"]) for c in completions]
