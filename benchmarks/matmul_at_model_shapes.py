"""How fast can one PPO update of the SmolLM2 benchmark be on this machine? Its linear layers' matmuls, timed alone.

`benchmarks/ppo_vs_trl112.py` reports utilization against a 2048³ matmul, a shape the 135M model never runs. This
times the matmuls an update of that benchmark does run, at their own shapes (SmolLM2-135M: d = 576, 3 KV heads of 64,
MLP 1536, 30 layers, 49,152-token LM head), with the benchmark's sizes: 8 rows, prompts of `--prompt-tokens`, 24 new
tokens, 2 PPO epochs, four full models, our trainer's work (the rollout's policy and value forwards come from the
first training forward, `reuse_first_training_forward`). Each matmul is timed alone (best of `--reps`), forward and,
for training, the two backward products (input and weight gradients), and the sum is what the update's matmuls
cost with nothing else: no attention scores, norms, activations, sampling, optimizer or Python. The measured
phases of the trainer can be read against it.

    python benchmarks/matmul_at_model_shapes.py --json benchmarks/results/matmul_at_model_shapes.json
"""

from __future__ import annotations

import argparse
import json

import torch
from _smollm2_speed import best_seconds

D, KV, FF, LAYERS, VOCAB = 576, 192, 1536, 30, 49152
LAYER_LINEARS = [(D, D), (KV, D), (KV, D), (D, D), (FF, D), (FF, D), (D, FF)]  # (out, in): q k v o gate up down


def linear_times(m: int, out: int, inp: int, dtype, reps: int) -> dict[str, float]:
    """Seconds of y = x Wᵀ ([m, in] × [in, out]) and of its backward products dX = dY W and dW = dYᵀ X."""
    x, w, dy = torch.randn(m, inp, dtype=dtype), torch.randn(out, inp, dtype=dtype), torch.randn(m, out, dtype=dtype)
    return {"fwd": best_seconds(lambda: torch.nn.functional.linear(x, w), reps),
            "dx": best_seconds(lambda: dy @ w, reps),
            "dw": best_seconds(lambda: dy.t() @ x, reps)}


def forward_s(m: int, head_rows: int, dtype, reps: int, backward: bool, cache: dict) -> tuple[float, float]:
    """(seconds, FLOPs) of the linear layers of one forward over m tokens (LM head on head_rows), and of its
    backward when `backward`."""
    parts = ("fwd", "dx", "dw") if backward else ("fwd",)
    seconds = flops = 0.0
    shapes = [(m, o, i, LAYERS) for o, i in LAYER_LINEARS] + ([(head_rows, VOCAB, D, 1)] if head_rows else [])
    for rows, out, inp, count in shapes:
        key = (rows, out, inp, str(dtype))
        if key not in cache:
            cache[key] = linear_times(rows, out, inp, dtype, reps)
        seconds += count * sum(cache[key][p] for p in parts)
        flops += count * len(parts) * 2 * rows * out * inp
    return seconds, flops


def update_bound(dtype, batch: int, prompt: int, response: int, epochs: int, reps: int) -> dict:
    cache: dict = {}
    full = batch * (prompt + response)
    prefill = forward_s(batch * prompt, batch, dtype, reps, False, cache)
    step = forward_s(batch, batch, dtype, reps, False, cache)
    phases = {
        "generation": (prefill[0] + (response - 1) * step[0], prefill[1] + (response - 1) * step[1]),
        # reference (LM head on the response positions) and reward model (no LM head); policy and value reused
        "rollout forwards": tuple(a + b for a, b in zip(forward_s(full, batch * response, dtype, reps, False, cache),
                                                        forward_s(full, 0, dtype, reps, False, cache))),
        # per epoch: policy and value forward + backward (value: no LM head)
        "training": tuple(epochs * (a + b) for a, b in zip(forward_s(full, batch * response, dtype, reps, True, cache),
                                                           forward_s(full, 0, dtype, reps, True, cache))),
    }
    out = {k: {"s": s, "gflop": f / 1e9, "gflops": f / s / 1e9} for k, (s, f) in phases.items()}
    out["total"] = {"s": sum(v["s"] for v in out.values()), "gflop": sum(v["gflop"] for v in out.values())}
    out["total"]["gflops"] = out["total"]["gflop"] / out["total"]["s"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt-tokens", type=int, default=51, help="mean prompt length of the benchmark's chat prompts")
    p.add_argument("--response-length", type=int, default=24)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--json", help="file to write the figures to")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    res = {str(dt).removeprefix("torch."): update_bound(dt, args.batch, args.prompt_tokens, args.response_length,
                                                          args.epochs, args.reps)
           for dt in (torch.float32, torch.bfloat16)}
    for dt, phases in res.items():
        print(f"{dt}: " + "; ".join(f"{k} {v['s']:.2f} s ({v['gflop']:.0f} GFLOP, {v['gflops']:.0f} GFLOP/s)"
                                    for k, v in phases.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "bound": res}, f, indent=1)


if __name__ == "__main__":
    main()
