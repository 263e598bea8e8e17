"""The LM head on a strided input against a contiguous one, on a CPU (issue 12; docs/benchmarks.md, docs/ppo.md).

With `logits_to_keep`, transformers gives the LM head `hidden[:, -k:]`, a strided view. This times `F.linear` of that
view and of a contiguous copy with SmolLM2's head shape (vocabulary 49152, hidden 576), in bf16 and fp32:

    python benchmarks/lm_head_input.py [--rows 8] [--length 75] [--keep 25] [--threads 2]
"""

from __future__ import annotations

import argparse

import torch
from _smollm2_speed import best_seconds


def best_ms(fn, reps: int) -> float:
    return best_seconds(fn, reps) * 1e3


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--length", type=int, default=75, help="sequence length of the hidden states")
    p.add_argument("--keep", type=int, default=25, help="positions the head runs on (logits_to_keep)")
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--hidden", type=int, default=576)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads; head [{args.vocab}, {args.hidden}], "
          f"input {args.rows} × {args.keep} of {args.length} positions")
    print("| dtype | strided input (ms) | contiguous input (ms) | ratio |\n| --- | --- | --- | --- |")
    for dtype in (torch.bfloat16, torch.float32):
        weight = torch.randn(args.vocab, args.hidden, dtype=dtype)
        hidden = torch.randn(args.rows, args.length, args.hidden, dtype=dtype)
        view = hidden[:, -args.keep:]
        contiguous = view.contiguous()
        with torch.no_grad():
            strided_ms = best_ms(lambda: torch.nn.functional.linear(view, weight), args.reps)
            contiguous_ms = best_ms(lambda: torch.nn.functional.linear(contiguous, weight), args.reps)
        print(f"| {str(dtype).removeprefix('torch.')} | {strided_ms:.1f} | {contiguous_ms:.1f} | "
              f"{strided_ms / contiguous_ms:.1f}× |")


if __name__ == "__main__":
    main()
