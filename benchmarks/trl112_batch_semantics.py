"""What the batch fields mean, measured: trl 1.12's PPOTrainer next to ours over a grid of
(per_device_train_batch_size, gradient_accumulation_steps, num_mini_batches, num_ppo_epochs).

For each setting both trainers run on tiny testbed models (one process each side, trl 1.12 first on PYTHONPATH for
its side only) and we count, per rollout: the sequences generated, the optimizer steps actually taken (a global
``torch.optim`` step hook: accelerate's skipped steps under gradient accumulation are not counted) and the
backward passes (micro-batches). Writes a JSON file and prints the markdown table for docs/migrating.md.

    pip install --no-deps --target /tmp/trl112 trl==1.12.0
    python benchmarks/trl112_batch_semantics.py --trl112 /tmp/trl112 --out benchmarks/results/trl112_batch_semantics.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import warnings

GRID = dict(bs=[2, 4], ga=[1, 2, 4], nmb=[1, 2, 4], epochs=[1, 2])


def count_one(impl: str, bs: int, ga: int, nmb: int, epochs: int) -> dict:
    import torch
    import torch.optim.optimizer as optmod

    from icegrt_trl.testbed import build_tokenizer, make_datasets, tiny_causal_lm, tiny_sequence_classifier

    tok = build_tokenizer()
    data = make_datasets(seed=0, num_unlabeled=256, num_eval=4)
    enc = lambda b: {"input_ids": tok(b["prompt"], add_special_tokens=False)["input_ids"]}  # noqa: E731
    train = data["unlabeled"].map(enc, batched=True, remove_columns=["prompt"])
    evals = data["eval"].map(enc, batched=True, remove_columns=["prompt"])
    small = dict(hidden_size=32, num_layers=1, num_heads=2)
    policy = tiny_causal_lm("llama", tok, seed=0, **small)
    ref = tiny_causal_lm("llama", tok, seed=0, **small)
    reward = tiny_sequence_classifier("llama", tok, seed=1, **small)
    value = tiny_sequence_classifier("llama", tok, seed=2, **small)
    rollout_guess = bs * ga  # both generate per_device × GA sequences per rollout: 2 rollouts
    settings = dict(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=bs, gradient_accumulation_steps=ga,
                    num_mini_batches=nmb, num_ppo_epochs=epochs, total_episodes=2 * rollout_guess,
                    local_rollout_forward_batch_size=256, response_length=4, stop_token="eos", bf16=False,
                    gradient_checkpointing=False, report_to="none", save_strategy="no", disable_tqdm=True,
                    num_sample_generations=0, seed=0, learning_rate=1e-5, logging_steps=1)
    if impl == "trl112":
        from trl.experimental.ppo import PPOConfig, PPOTrainer
    else:
        from icegrt_trl import PPOConfig, PPOTrainer
    try:
        args = PPOConfig(**settings)
        trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                             train_dataset=train, value_model=value, eval_dataset=evals)
    except (ValueError, AssertionError) as e:
        return {"error": str(e).splitlines()[0][:160]}
    counts = {"generate_calls": 0, "rows": 0, "steps": 0, "backward": 0}
    gen_owner = policy
    original_generate = gen_owner.generate

    def generate(*a, **k):
        out = original_generate(*a, **k)
        counts["generate_calls"] += 1
        counts["rows"] += (out.sequences if hasattr(out, "sequences") else out).shape[0]
        return out

    gen_owner.generate = generate
    handle = optmod.register_optimizer_step_post_hook(lambda *a, **k: counts.__setitem__("steps", counts["steps"] + 1))
    original_backward = torch.Tensor.backward

    def backward(self, *a, **k):
        counts["backward"] += 1
        return original_backward(self, *a, **k)

    torch.Tensor.backward = backward
    try:
        trainer.train()
    finally:
        torch.Tensor.backward = original_backward
        handle.remove()
    n = max(counts["generate_calls"], 1)
    return {"rollout_sequences": counts["rows"] / n, "optimizer_steps_per_rollout": counts["steps"] / n,
            "micro_batches_per_rollout": counts["backward"] / n, "rollouts": counts["generate_calls"],
            "gradient_accumulation_steps_after_init": args.gradient_accumulation_steps}


def worker(impl: str) -> None:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    warnings.filterwarnings("ignore")
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(1)
    rows = []
    for bs, ga, nmb, epochs in itertools.product(GRID["bs"], GRID["ga"], GRID["nmb"], GRID["epochs"]):
        rows.append({"bs": bs, "ga": ga, "nmb": nmb, "epochs": epochs, **count_one(impl, bs, ga, nmb, epochs)})
    print("RESULT " + json.dumps(rows))


def run_side(impl: str, trl112: str | None) -> list[dict]:
    env = dict(os.environ)
    if impl == "trl112":
        env["PYTHONPATH"] = trl112 + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, __file__, "--worker", impl], env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"{impl} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def fmt(r: dict) -> str:
    if "error" in r:
        return "refused"
    return f"{r['rollout_sequences']:g} seq, {r['optimizer_steps_per_rollout']:g} steps, {r['micro_batches_per_rollout']:g} µb"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trl112", default="/tmp/trl112", help="folder where trl==1.12.0 was installed with --target")
    p.add_argument("--out", default="benchmarks/results/trl112_batch_semantics.json")
    p.add_argument("--worker", choices=["trl112", "ours"], help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        worker(a.worker)
        return
    theirs, ours = run_side("trl112", a.trl112), run_side("ours", None)
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"grid": GRID, "trl112": theirs, "ours": ours}, f, indent=1)
    print("| bs | GA | nmb | epochs | trl 1.12 (per rollout) | icegrt-trl (per rollout) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for t, o in zip(theirs, ours):
        print(f"| {t['bs']} | {t['ga']} | {t['nmb']} | {t['epochs']} | {fmt(t)} | {fmt(o)} |")


if __name__ == "__main__":
    main()
