"""ICE-GRT's reward size scaling, in miniature: PPO against reward models of increasing size (same data, same policy).

ICE-GRT calls reward size scaling critical without measuring it (its open question 3). On the testbed, per seed:
one SFT policy (the default recipe's), then for each reward-model size a Bradley–Terry sequence classifier of that
size trained from scratch on the same 1000 noisy preference pairs, PPO from the same SFT policy against it (the
default recipe's PPO section), and the gold judge: gold score and exact match of greedy completions on the 200
held-out prompts, the reward model's accuracy on clean held-out pairs, and its accuracy on gold-labelled pairs of the
PPO policy's own samples (4 per held-out prompt) — where PPO actually queries it.

    python benchmarks/reward_size_scaling.py --seeds 0 1 2      # ~2 min per (seed, size) on 2 CPU cores
    python benchmarks/reward_size_scaling.py --summarize        # table from benchmarks/results/reward_size_scaling.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "tiny-offline.yaml"
RESULTS = ROOT / "benchmarks" / "results" / "reward_size_scaling.json"
SIZES = ("64x2", "128x4", "256x6")  # hidden x layers of the reward model (the policy is 128x4)


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")


def recipe_for(seed: int, size: str, out: Path) -> Path:
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe["output_dir"], recipe["seed"] = str(out), seed
    stages = recipe["stages"]
    stages["reward"] = {**{k: v for k, v in stages["reward"].items() if not k.startswith("grm_")},
                        "model_name_or_path": f"testbed:llama:{size}", "reward_model_type": "classifier"}
    recipe["stages"] = {k: stages[k] for k in ("sft", "reward", "ppo", "eval")}
    path = out.parent / f"recipe-{out.name}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def accuracy_on_policy_samples(run_dir: Path, seed: int) -> tuple[float, int]:
    from transformers import AutoModelForCausalLM

    from icegrt_trl.reward.evaluation import load_reward_model
    from icegrt_trl.rlp.sampling import sample_completions
    from icegrt_trl.stages.loading import load_saved_tokenizer
    from icegrt_trl.stages.rlp import _accuracy_on_samples
    from icegrt_trl.testbed import TestbedConfig, make_datasets

    testbed = yaml.safe_load(RECIPE.read_text())["testbed"]
    prompts = list(make_datasets(TestbedConfig(**testbed))["eval"]["prompt"])
    policy = AutoModelForCausalLM.from_pretrained(run_dir / "ppo")
    tok = load_saved_tokenizer(str(run_dir / "ppo"))
    completions = sample_completions(policy, tok, prompts, 4, 1.0, 12, 256, seed + 1, progress=False)
    rm, rm_tok = load_reward_model(run_dir / "reward")
    return _accuracy_on_samples(rm, rm_tok, prompts, completions)


def one(seed: int, size: str, root: Path) -> dict:
    out = root / f"seed{seed}" / f"rm{size}"
    path = recipe_for(seed, size, out)
    base = root / f"seed{seed}" / "sft"
    if not (base / "config.json").is_file():  # one SFT policy per seed, shared by every size
        run([sys.executable, "-m", "icegrt_trl.cli", "pipeline", str(path), "--stages", "sft"])
        os.replace(out / "sft", base)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "sft").exists():
        os.symlink(base, out / "sft")
    run([sys.executable, "-m", "icegrt_trl.cli", "pipeline", str(path), "--stages", "reward,ppo,eval"])
    res = json.loads((out / "results.json").read_text())
    acc, pairs = accuracy_on_policy_samples(out, seed)
    from icegrt_trl.reward.evaluation import load_reward_model

    rm, _ = load_reward_model(out / "reward")
    return {"seed": seed, "size": size, "rm_params": sum(p.numel() for p in rm.parameters()),
            "rm_acc_id": res["reward"]["preferences_id/accuracy"], "rm_acc_ood": res["reward"]["preferences_ood/accuracy"],
            "rm_acc_on_policy_samples": acc, "policy_sample_pairs": pairs,
            "gold_sft": res["eval"]["stage:sft/gold_score"], "gold_ppo": res["eval"]["stage:ppo/gold_score"],
            "exact_sft": res["eval"]["stage:sft/exact_match"], "exact_ppo": res["eval"]["stage:ppo/exact_match"]}


def summarize(rows: list[dict]) -> str:
    lines = ["| RM size (hidden×layers) | RM params | RM acc. ID | RM acc. on PPO samples | PPO gold | PPO exact | "
             "SFT gold |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for size in SIZES:
        group = [r for r in rows if r["size"] == size]
        if not group:
            continue

        def ms(key):
            vals = [r[key] for r in group]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            return f"{statistics.mean(vals):.3f} ± {sd:.3f}"

        lines.append(f"| {size} | {group[0]['rm_params']:,} | {ms('rm_acc_id')} | {ms('rm_acc_on_policy_samples')} | "
                     f"{ms('gold_ppo')} | {ms('exact_ppo')} | {ms('gold_sft')} |")
    seeds = sorted({r["seed"] for r in rows})
    lines.append(f"\nmean ± sd over seeds {seeds}; 200 held-out prompts each.")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    p.add_argument("--sizes", nargs="*", default=list(SIZES))
    p.add_argument("--root", default=str(ROOT / "benchmarks" / "_work" / "reward_size_scaling"))
    p.add_argument("--summarize", action="store_true")
    args = p.parse_args()
    rows = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    if not args.summarize:
        for seed in args.seeds:
            for size in args.sizes:
                rows = [r for r in rows if (r["seed"], r["size"]) != (seed, size)] + [one(seed, size, Path(args.root))]
                RESULTS.parent.mkdir(parents=True, exist_ok=True)
                RESULTS.write_text(json.dumps(rows, indent=1))
    print(summarize(rows))


if __name__ == "__main__":
    main()
