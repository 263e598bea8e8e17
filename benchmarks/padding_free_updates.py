"""Whole PPO updates with and without padding-free forwards, alternating inside one process.

The benchmark of docs/benchmarks.md runs every variant in fresh processes, whose speed on this shared 2-core machine
moves by ±10 % from one process to the next: more than padding-free changes an update. Here one trainer (ours,
SmolLM2-135M-Instruct as all four models, bf16, the settings of `benchmarks/ppo_vs_trl112.py --model smollm2
--full-length`) switches every model's attention between the padding-free and the padded grouped eager attention
before each update, in the order A B B A A B B A ..., after one warm-up update. Each update samples new prompts, so
both variants see the same mix of batch shapes over the run. Prints each variant's median update and phases.

    python benchmarks/padding_free_updates.py [--pairs 6] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _ppo_bench_worker as worker  # noqa: E402

from icegrt_trl.ppo.generation import innermost_generator  # noqa: E402
from icegrt_trl.ppo.grouped_attention import IMPLEMENTATION, PADDING_FREE, register  # noqa: E402

VARIANTS = {"padding-free": PADDING_FREE, "padded": IMPLEMENTATION}


class SwitchAttention(TrainerCallback):
    """Before the first step of each update, set every model's attention to the variant of that update."""

    def __init__(self, trainer, steps_per_update: int, order: list[str]):
        self.trainer, self.steps_per_update, self.order = trainer, steps_per_update, order

    def on_step_begin(self, args, state, control, **kw):
        if state.global_step % self.steps_per_update == 0:
            name = VARIANTS[self.order[state.global_step // self.steps_per_update]]
            for m in self.trainer._all_models():
                innermost_generator(m).set_attn_implementation(name)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=6, help="A B B A groups after the warm-up (4 updates each)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--json", help="write each update's variant, seconds and phases here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    register(IMPLEMENTATION)
    order = ["padding-free"] + ["padding-free", "padded", "padded", "padding-free"] * args.pairs
    phases = worker.PhaseTimer()
    timer = worker.UpdateTimer(1, phases)
    with tempfile.TemporaryDirectory() as out:
        overrides = dict(bf16=True, use_cpu=True, stop_token=None, missing_eos_penalty=None, response_length=24,
                         num_ppo_epochs=2)  # the benchmark's smollm2 rows
        trainer, _, models = worker.make_trainer("ours", "full", "smollm2", len(order), out, timer, overrides,
                                                 full_length=True)
        trainer.stop_token_ids = []  # every sample runs to response_length, as in the benchmark's --full-length
        trainer.generation_config.eos_token_id = trainer.greedy_generation_config.eos_token_id = None
        trainer.add_callback(SwitchAttention(trainer, timer.steps_per_update, order))
        phases.install(trainer, models)
        trainer.train()
    durations = timer.durations()
    snaps = timer.snaps
    rows = []
    for i, (variant, seconds, faults) in enumerate(zip(order, durations, timer.page_faults())):
        (t0, _), (t1, _) = snaps[i], snaps[i + 1]
        rows.append({"variant": variant, "s": seconds, "page_faults": faults,
                     "phases": {k: t1[k] - t0.get(k, 0.0) for k in t1}})
    timed = rows[1:]
    print(f"SmolLM2-135M-Instruct, bf16, batch 8, 24 new tokens, {trainer.args.num_ppo_epochs} PPO epochs, "
          f"{args.threads} threads; {len(timed)} updates after a warm-up, alternating A B B A:")
    for variant in VARIANTS:
        mine = [r for r in timed if r["variant"] == variant]
        ph = {k: statistics.median(r["phases"].get(k, 0.0) for r in mine) for k in mine[0]["phases"]}
        seconds = [r["s"] for r in mine]
        print(f"  {variant}: median {statistics.median(seconds):.2f} s/update "
              f"({', '.join(f'{s:.2f}' for s in seconds)})")
        print("    phases (median s): " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(ph.items(),
                                                                                 key=lambda kv: -kv[1])))
    # paired: each A B B A group's two updates of each variant, so that drift of the machine's speed cancels
    groups = [timed[i:i + 4] for i in range(0, len(timed) - 3, 4)]
    diffs = [sum(r["s"] for r in g if r["variant"] == "padded") - sum(r["s"] for r in g if r["variant"] != "padded")
             for g in groups]
    print(f"  per A B B A group, padded minus padding-free, s per 2 updates: {', '.join(f'{d:+.2f}' for d in diffs)}"
          f" (mean {statistics.mean(diffs):+.2f})")
    pf = [r["s"] for r in timed if r["variant"] == "padding-free"]
    pad = [r["s"] for r in timed if r["variant"] == "padded"]
    print(f"  padded / padding-free, ratio of the medians: {statistics.median(pad) / statistics.median(pf):.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"order": order, "updates": rows}, indent=1))


if __name__ == "__main__":
    main()
