"""One sampled token's draw on a CPU: ``generate``'s ``torch.multinomial`` against our inverse-CDF draw (issue 12).

``torch.multinomial(probs, 1)`` draws an exponential for every vocabulary entry; on a CPU that runs one entry at a
time. ``icegrt_trl.ppo.generation.InverseCDFSampling`` draws one uniform per row and searches the float64 cumulative
sum. This times both on logits of SmolLM2's vocabulary (the softmax included in both), best of `--reps`:

    python benchmarks/sampling_draw.py [--rows 8] [--vocab 49152] [--threads 2]
"""

from __future__ import annotations

import argparse

import torch
from _smollm2_speed import best_seconds

from icegrt_trl.ppo.generation import InverseCDFSampling


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=20)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    scores = torch.randn(args.rows, args.vocab) * 3
    ids = torch.zeros(args.rows, 1, dtype=torch.long)
    draw = InverseCDFSampling()
    variants = {"torch.multinomial (generate's draw)":
                lambda: torch.multinomial(torch.softmax(scores, -1), 1),
                "inverse CDF (ours)": lambda: draw(ids, scores).argmax(-1)}
    print(f"torch {torch.__version__}, {args.threads} threads; {args.rows} rows × {args.vocab} tokens, "
          f"best of {args.reps}\n| draw | ms per decoded token |\n| --- | --- |")
    for name, fn in variants.items():
        print(f"| {name} | {best_seconds(fn, args.reps) * 1e3:.2f} |")


if __name__ == "__main__":
    main()
