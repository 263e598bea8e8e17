"""`torch.compile` and a static KV cache on a CPU, at the PPO benchmark's shapes (issue 12; docs/benchmarks.md).

Two parts of a PPO update on SmolLM2-135M-Instruct, each in a fresh process so that one variant's compiled code or
thread state cannot help another:

- a training step as our trainer runs it under `bf16=True`: fp32 weights, autocast to bf16, eager attention,
  8 rows × 75 tokens, the LM head on the last 25 positions, forward + backward; eager against `torch.compile`;
- the rollout's sampling: 8 prompts × 51 tokens, 24 new tokens each (no stop), temperature 0.7; the dynamic KV
  cache against `cache_implementation="static"`, without and with `torch.compile` of the forward.

The variants alternate over `--rounds` rounds. Each reports its first call in round 1 (compilation included, with
an empty inductor cache: the run starts with a fresh `TORCHINDUCTOR_CACHE_DIR`), its first call in the last round
(compiled code from the cache, as in a user's second run) and the median of the next `--reps` calls of each round:

    python benchmarks/compile_and_static_cache.py [--threads 2] [--reps 5] [--rounds 2] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

VARIANTS = {
    "train step, eager": ("train", "eager", "float32"),
    "train step, torch.compile": ("train", "compile", "float32"),
    "sampling, fp32 weights + autocast, dynamic cache": ("sample", "dynamic", "float32"),
    "sampling, bf16 weights, dynamic cache": ("sample", "dynamic", "bfloat16"),
    "sampling, bf16 weights, static cache": ("sample", "static", "bfloat16"),
    "sampling, bf16 weights, static cache + torch.compile": ("sample", "static_compile", "bfloat16"),
    "sampling, fp32 weights + autocast, static cache": ("sample", "static", "float32"),
}


def run_variant(part: str, mode: str, weights: str, threads: int, reps: int) -> dict:
    """One variant, in this process: the first call's and the median later call's seconds."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    from icegrt_trl.testbed.smollm2 import smollm2_path

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    # eager attention for training: what the trainer picks under bf16 on a CPU; SDPA for sampling, as the trainer
    attention = "eager" if part == "train" else "sdpa"
    model = AutoModelForCausalLM.from_pretrained(smollm2_path(), dtype=getattr(torch, weights),
                                                 attn_implementation=attention)
    if part == "train":
        model.train()
        ids = torch.randint(0, model.config.vocab_size, (8, 75))
        forward = torch.compile(model) if mode == "compile" else model

        def call():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = forward(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=25).logits
                loss = logits.float().logsumexp(-1).mean()
            loss.backward()
    else:
        model.eval()
        ids = torch.randint(0, model.config.vocab_size, (8, 51))
        gen = GenerationConfig(max_new_tokens=24, min_new_tokens=24, do_sample=True, temperature=0.7, top_k=0,
                               top_p=1.0, pad_token_id=model.config.pad_token_id or 0, eos_token_id=None)
        if mode.startswith("static"):
            gen.cache_implementation = "static"
        if mode == "static_compile":
            model.forward = torch.compile(model.forward, dynamic=False)

        def call():
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gen)
    t0 = time.perf_counter()
    try:
        call()
    except Exception as err:  # a variant that cannot run is a result too
        return {"error": f"{type(err).__name__}: {str(err)[:200]}"}
    first = time.perf_counter() - t0
    later = []
    for _ in range(reps):
        t0 = time.perf_counter()
        call()
        later.append(time.perf_counter() - t0)
    return {"first_s": first, "later_s": later, "median_s": sorted(later)[len(later) // 2]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2, help="the variants run in turn this many times")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--variant", default=None, help=argparse.SUPPRESS)  # internal: run one variant, print JSON
    args = p.parse_args(argv)
    if args.variant:
        print("RESULT " + json.dumps(run_variant(*VARIANTS[args.variant], args.threads, args.reps)))
        return
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": tempfile.mkdtemp(prefix="inductor-")}
    results = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name in VARIANTS:
            out = subprocess.run([sys.executable, __file__, "--variant", name, "--threads", str(args.threads),
                                  "--reps", str(args.reps)], capture_output=True, text=True, env=env)
            lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
            results[name].append(json.loads(lines[-1][7:]) if lines else {"error": out.stderr[-300:]})
            print(name, results[name][-1], flush=True)
    print("| variant | first call, round 1 (s) | first call, last round (s) | median later call per round (s) |\n"
          "| --- | --- | --- | --- |")
    for name, rounds in results.items():
        if "error" in rounds[0]:
            print(f"| {name} | fails: {rounds[0]['error']} | | |")
            continue
        medians = ", ".join(f"{r['median_s']:.2f}" for r in rounds)
        print(f"| {name} | {rounds[0]['first_s']:.1f} | {rounds[-1]['first_s']:.1f} | {medians} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "reps": args.reps, "rounds": args.rounds, "results": results}, f,
                      indent=1)


if __name__ == "__main__":
    main()
