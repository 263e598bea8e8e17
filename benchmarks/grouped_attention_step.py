"""One bf16 training step of SmolLM2-135M-Instruct under transformers' eager attention and under our grouped eager
attention (icegrt_trl.ppo.grouped_attention), alternating, on the shapes of the PPO benchmark: 8 rows of a shared
24-token prefix + 20-39 prompt tokens + 24 response tokens (left padded, 87 columns), the prefix run once
(share_prompt_prefix), LM head on the 25 last positions, fp32 log-probs at temperature 0.7, backward, clipping at 1.0,
fused AdamW. Allocator as the trainer sets it on a CPU (cpu_keep_freed_memory). ``--padding-free`` adds a third
variant: the grouped attention with the rows packed without their left padding (icegrt_trl.ppo.padding_free).

    python benchmarks/grouped_attention_step.py [--rounds 8] [--threads 2] [--padding-free]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import AutoModelForCausalLM

from icegrt_trl.ppo.cpu_memory import keep_freed_memory_in_process
from icegrt_trl.ppo.grouped_attention import eager_implementation_for
from icegrt_trl.ppo.modeling import contiguous_lm_head_input, model_output, position_ids_from
from icegrt_trl.ppo.prefix import split_shared_prefix
from icegrt_trl.ppo.trainer import response_logprobs
from icegrt_trl.testbed.smollm2 import smollm2_path


def chat_like_batch(rows: int = 8, prefix: int = 24, response: int = 24, vocab: int = 49152, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(20, 40, (rows,), generator=g)
    width = prefix + int(lens.max()) + response
    ids = torch.full((rows, width), 2)
    mask = torch.zeros(rows, width, dtype=torch.long)
    shared = torch.randint(3, vocab, (prefix,), generator=g)
    for i in range(rows):
        start = width - response - prefix - int(lens[i])
        ids[i, start:start + prefix] = shared
        ids[i, start + prefix:width - response] = torch.randint(3, vocab, (int(lens[i]),), generator=g)
        mask[i, start:] = 1
    ids[:, width - response:] = torch.randint(3, vocab, (rows, response), generator=g)
    return ids, mask, prefix, response


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=8, help="alternations of the two attentions")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--padding-free", action="store_true", help="also time the padding-free variant")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory_in_process()
    model = AutoModelForCausalLM.from_pretrained(smollm2_path(), attn_implementation="eager").train()
    contiguous_lm_head_input(model)
    grouped = eager_implementation_for(model.config)
    ids, mask, prefix, response = chat_like_batch()
    pos = position_ids_from(mask)
    responses = ids[:, -response:]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-7, fused=True)

    def step() -> tuple[float, float, float]:
        """Seconds of the whole step, of its forward (to the loss), and of its backward."""
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model_output(model, ids, mask, pos, split_shared_prefix(ids, mask, prefix), response + 1).logits
            loss = response_logprobs(logits[:, -response - 1:-1], responses, 0.7).mean()
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0, t1 - t0, t2 - t1

    times = {"eager": [], grouped: []}
    if args.padding_free:
        times[eager_implementation_for(model.config, padding_free=True)] = []
    for name in times:  # warm-up
        model.set_attn_implementation(name)
        step(), step()
    for _ in range(args.rounds):
        for name in times:
            model.set_attn_implementation(name)
            times[name].append(step())
    print(f"{ids.shape[0]} rows x {ids.shape[1]} columns ({int(mask.sum())} real tokens, {prefix} shared), bf16 "
          f"autocast, {args.threads} threads, s per step:")
    for name, ts in times.items():
        steps = [t[0] for t in ts]
        print(f"  {name}: median {statistics.median(steps):.3f}  ({', '.join(f'{t:.2f}' for t in steps)}); forward "
              f"{statistics.median(t[1] for t in ts):.3f}, backward {statistics.median(t[2] for t in ts):.3f}")


if __name__ == "__main__":
    main()
