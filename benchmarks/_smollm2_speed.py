"""`ppo_vs_trl112.py --model smollm2`: both trainers on SmolLM2-135M-Instruct (49k vocabulary, chat prompts), with
model FLOPs per update counted from the config, the achieved rate against this machine's measured matmul peak, a
profile by phase, and how cost grows with response length and rollout batch (issue 12)."""

from __future__ import annotations

import statistics
import time

import torch

# The setting: batch 8, 24 new tokens, 2 PPO epochs, one mini-batch (both PPOConfigs agree on this shape).
BASE = dict(batch=8, response_length=24, ppo_epochs=2)


def best_seconds(fn, reps: int) -> float:
    """Fastest of `reps` timed calls of `fn`, after one untimed warm-up call."""
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_peak(threads: int, n: int = 2048, reps: int = 6) -> dict[str, float]:
    """Best GFLOP/s of an n×n×n matmul in fp32 and bf16 on `threads` threads (what the hardware gives a GEMM)."""
    torch.set_num_threads(threads)
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        out[str(dtype).removeprefix("torch.")] = 2 * n ** 3 / best_seconds(lambda: a @ b, reps) / 1e9
    return out


def forward_flops(cfg: dict, tokens: float, context: float, head_positions: float) -> float:
    """FLOPs of one forward over `tokens` tokens of a Llama-style decoder: 2 × weights per token in the layers, the
    attention scores (QKᵀ and AV: 4 × d × context per token and layer) and the LM head on `head_positions`."""
    d, L, ff = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"]
    kv = cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or d // cfg["num_attention_heads"]
    per_layer = 2 * (d * d + 2 * d * kv * head_dim + d * d) + 2 * 3 * d * ff
    return L * tokens * (per_layer + 4 * d * context) + 2 * d * cfg["vocab_size"] * head_positions


def update_flops(cfg: dict, batch: int, prompt: float, response: int, epochs: int, lora: bool,
                 shared_value: bool = False) -> dict[str, float]:
    """Model FLOPs of one PPO update on the useful tokens (unpadded prompts, full responses), the same for both
    trainers: generation (prefill + one token at a time), the rollout's four no-grad forwards (policy, reference,
    value, reward; LM head at response positions only) and `epochs` passes of policy + value forward and backward
    (backward = 2 × forward for full weights, 1 × for a frozen base under LoRA: input gradients only). With
    `shared_value` (value head on the policy) the value model's forwards are not run. Gradient checkpointing's
    recomputation is not model work and is not counted."""
    T = prompt + response
    gen = batch * (forward_flops(cfg, prompt, prompt / 2, 1) + forward_flops(cfg, response, prompt + response / 2,
                                                                              response))
    policy_fwd = batch * forward_flops(cfg, T, T / 2, response)
    body_fwd = batch * forward_flops(cfg, T, T / 2, 0)
    value_fwd = 0 if shared_value else body_fwd
    rollout = 2 * policy_fwd + body_fwd + value_fwd
    bwd = 1 if lora else 2
    training = epochs * (1 + bwd) * (policy_fwd + value_fwd)
    return {"generation": gen, "rollout_forwards": rollout, "training": training,
            "total": gen + rollout + training}


def worker_args(row: dict) -> list[str]:
    a = ["--batch", str(row["batch"]), "--response-length", str(row["response_length"]),
         "--ppo-epochs", str(row["ppo_epochs"])]
    if row.get("bf16"):
        a.append("--bf16")
    if row.get("base_dtype"):
        a += ["--base-dtype", row["base_dtype"]]
    if row.get("gradient_checkpointing"):
        a.append("--gradient-checkpointing")
    if row.get("set"):
        a += ["--set", *row["set"]]
    if row.get("full_length"):
        a.append("--full-length")
    if row.get("keep_freed_memory"):
        a.append("--keep-freed-memory")
    if row.get("plain_eager_attention"):
        a.append("--plain-eager-attention")
    return a


def row_figures(res: dict, peak: dict[str, float]) -> dict:
    s = res["settings"]
    cfg = res["model_config"]
    lora = res["mode"] == "lora"
    fl = update_flops(cfg, s["per_device_train_batch_size"], res["mean_prompt_tokens"], s["response_length"],
                      s["num_ppo_epochs"], lora, bool(s.get("value_head_on_policy")))
    # trl 1.12 never enters autocast (it ignores bf16): its matmuls run at the fp32 rate whatever bf16 says
    dtype = "bfloat16" if (s["bf16"] and res["impl"] == "ours") or (lora and res.get("base_dtype") == "bfloat16") \
        else "float32"
    rate = fl["total"] / res["s_per_update"] / 1e9
    return {"gflop": fl["total"] / 1e9, "gflops": rate, "dtype": dtype, "util": rate / peak[dtype], "flops": fl}


def phase_groups(phases: dict) -> dict[str, float]:
    """The PhaseTimer's phases folded into generation / rollout forwards / training / other (s per update)."""
    g = {"generation": 0.0, "rollout forwards": 0.0, "training (fwd+bwd+step)": 0.0, "other": 0.0}
    for name, v in phases.items():
        if name == "generation":
            g["generation"] += v["s"]
        elif name.startswith("fwd/"):
            g["rollout forwards"] += v["s"]
        elif name.startswith("fwd+grad/") or name in ("backward", "optimizer.step"):
            g["training (fwd+bwd+step)"] += v["s"]
        else:
            g["other"] += v["s"]
    return g


def median(xs):
    return statistics.median(list(xs))
