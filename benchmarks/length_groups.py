"""Policy + value forward and backward of 8 chat rows in one batch against two length-sorted groups of 4 (less
padding, smaller matmuls), with the shared prompt prefix, on SmolLM2-135M-Instruct in fp32, alternating.

    python benchmarks/length_groups.py [--rounds 6]

Prints the padded widths of each draw and the seconds of each variant."""

import argparse
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _ppo_bench_worker import make_datasets  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=6, help="random draws of 8 prompts, each timed both ways")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from icegrt_trl.ppo.modeling import PolicyAndValue, ValueModel
    from icegrt_trl.ppo.prefix import prefix_length_to_share
    from icegrt_trl.testbed import TestbedConfig
    from icegrt_trl.testbed.smollm2 import smollm2_path

    path = smollm2_path()
    tok = AutoTokenizer.from_pretrained(path)
    tok.pad_token = "<|endoftext|>"
    data = make_datasets(TestbedConfig(suite="chat", seed=0, num_sft=0, num_unlabeled=256, num_eval=8))
    prompts = [tok(tok.apply_chat_template(q, add_generation_prompt=True, tokenize=False),
                   add_special_tokens=False)["input_ids"] for q in data["unlabeled"]["prompt"]]
    value = ValueModel.from_model(AutoModelForSequenceClassification.from_pretrained(path, num_labels=1))
    wrapper = PolicyAndValue(AutoModelForCausalLM.from_pretrained(path), value).train()
    response, pad = 24, tok.pad_token_id

    def batch(rows):
        width = max(len(r) for r in rows)
        ids = torch.tensor([[pad] * (width - len(r)) + r + list(range(100, 100 + response)) for r in rows])
        return ids, (ids != pad).long(), width

    def step(groups):
        wrapper.zero_grad(set_to_none=True)
        start, loss = time.perf_counter(), 0
        for ids, mask, width in groups:
            logits, values = wrapper(ids, mask, logits_to_keep=response + 1,
                                     prefix_length=prefix_length_to_share(ids, mask, width))
            loss = loss + logits[:, -response - 1:-1].float().logsumexp(-1).sum() + values[:, -response - 1:-1].sum()
        loss.backward()
        return time.perf_counter() - start

    random.seed(0)
    seconds = {"one batch of 8": [], "two groups of 4": []}
    for r in range(args.rounds):
        rows = random.sample(prompts, 8)
        by_length = sorted(rows, key=len)
        variants = {"one batch of 8": [batch(rows)], "two groups of 4": [batch(by_length[:4]), batch(by_length[4:])]}
        print("padded widths", {k: [g[0].shape[1] for g in v] for k, v in variants.items()}, flush=True)
        for name in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
            seconds[name].append(step(variants[name]))
    for name, v in seconds.items():
        print(f"{name}: {', '.join(f'{x:.2f}' for x in v)} s; sum {sum(v):.2f} s")


if __name__ == "__main__":
    main()
