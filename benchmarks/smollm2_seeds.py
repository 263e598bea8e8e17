"""recipes/smollm2-cpu.yaml over seeds: is the gain on held-out prompts real?

Each seed runs the whole recipe (sample_preferences → GRM reward model → PPO → RLP-SPG → eval) with that run seed
(sampling, label noise, reward-head and adapter initialization, rollouts); the testbed seed stays 0, so every seed is
judged on the same 200 held-out prompts.

    python benchmarks/smollm2_seeds.py --seeds 0 1 2         # ~30 min per seed on 2 CPU cores
    python benchmarks/smollm2_seeds.py --summarize           # tables from benchmarks/results/smollm2_seeds.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "smollm2-cpu.yaml"
RESULTS = ROOT / "benchmarks" / "results" / "smollm2_seeds.json"
POLICIES = (("SmolLM2 (start)", "testbed:smollm2"), ("PPO", "stage:ppo"), ("RLP-SPG → PPO", "stage:rlp_spg/ppo"))


def run_seed(seed: int, root: Path) -> dict:
    out = root / f"seed{seed}"
    if not (out / "results.json").is_file() or "eval" not in json.loads((out / "results.json").read_text()):
        recipe = yaml.safe_load(RECIPE.read_text())
        recipe["seed"], recipe["output_dir"] = seed, str(out)
        path = root / f"recipe-seed{seed}.yaml"
        root.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        start = time.time()
        proc = subprocess.run([sys.executable, "-m", "icegrt_trl.cli", "pipeline", str(path)], capture_output=True,
                              text=True)
        if proc.returncode:
            sys.exit(f"seed {seed} failed:\n{proc.stderr[-3000:]}")
        print(f"seed {seed}: {time.time() - start:.0f} s", flush=True)
    res = json.loads((out / "results.json").read_text())
    ev = res["eval"]
    row = {"seed": seed, "runtime_s": sum(v.get("runtime_s", 0) for v in res.values()),
           "rm_test_accuracy": res["reward"].get("test/accuracy"),
           "rm_acc_on_ppo_samples_before": res.get("rlp", {}).get("rm_accuracy_on_policy_samples/before"),
           "rm_acc_on_ppo_samples_after_spg": res.get("rlp", {}).get("rm_accuracy_on_policy_samples/after_spg"),
           "preference_pairs": res["sample_preferences"]["pairs"]}
    row.update(paired_gains(out / "eval" / "samples.jsonl"))
    for _, spec in POLICIES:
        for key in ("gold_score", "gold_score_ci95", "exact_match", "response_tokens", "kl_vs_reference",
                    "win_rate_vs_testbed:smollm2"):
            if f"{spec}/{key}" in ev:
                row[f"{spec}/{key}"] = ev[f"{spec}/{key}"]
    return row


def paired_gains(samples_file: Path, n_resamples: int = 1000) -> dict:
    """Per policy: the mean over prompts of (its gold − the start's gold), with a paired bootstrap 95 % interval."""
    from icegrt_trl.reward.evaluation import bootstrap_ci

    gold: dict[str, list[float]] = {}
    for line in samples_file.read_text().splitlines():
        r = json.loads(line)
        gold.setdefault(r["policy"], []).append(r["gold"])
    start = gold[POLICIES[0][1]]
    out = {}
    for _, spec in POLICIES[1:]:
        if spec not in gold:  # a run whose rlp stage did not run
            continue
        diffs = [a - b for a, b in zip(gold[spec], start)]
        low, high = bootstrap_ci(diffs, n_resamples=n_resamples, seed=0)
        out[f"{spec}/gain"] = round(sum(diffs) / len(diffs), 4)
        out[f"{spec}/gain_ci95"] = f"[{low:.3f}, {high:.3f}]"
    return out


def summarize(rows: list[dict]) -> str:
    def ms(key):
        vals = [r[key] for r in rows if key in r and r[key] is not None]
        if not vals:
            return "–"
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return f"{statistics.mean(vals):.3f} ± {sd:.3f}"

    lines = ["| policy | gold score | gain over start | exact match | win-rate vs start | KL to start (nats) | "
             "response tokens |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for label, spec in POLICIES:
        lines.append(f"| {label} | {ms(spec + '/gold_score')} | {ms(spec + '/gain')} | {ms(spec + '/exact_match')} | "
                     f"{ms(spec + '/win_rate_vs_testbed:smollm2')} | {ms(spec + '/kl_vs_reference')} | "
                     f"{ms(spec + '/response_tokens')} |")
    lines += ["", "Per seed: gold score of the start, gain over it with a paired 95 % bootstrap interval over the 200 "
              "prompts:", "",
              "| seed | start | PPO gain | RLP-SPG → PPO gain | RM acc. (test) | RM acc. on PPO samples before → after "
              "SPG | minutes |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        start = POLICIES[0][1]
        cells = [f"{r.get(start + '/gold_score')}"] + [f"{r.get(s + '/gain', '–')} {r.get(s + '/gain_ci95', '')}"
                                                       for _, s in POLICIES[1:]]
        lines.append(f"| {r['seed']} | {' | '.join(cells)} | {r['rm_test_accuracy']} | "
                     f"{r['rm_acc_on_ppo_samples_before']} → {r['rm_acc_on_ppo_samples_after_spg']} | "
                     f"{r['runtime_s'] / 60:.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    p.add_argument("--root", default=str(ROOT / "benchmarks" / "_work" / "smollm2_seeds"))
    p.add_argument("--summarize", action="store_true")
    p.add_argument("--results", default=str(RESULTS), help="the JSON file the rows are kept in")
    args = p.parse_args()
    results = Path(args.results)
    rows = json.loads(results.read_text()) if results.is_file() else []
    if not args.summarize:
        for seed in args.seeds:
            rows = [r for r in rows if r["seed"] != seed] + [run_seed(seed, Path(args.root))]
            results.parent.mkdir(parents=True, exist_ok=True)
            results.write_text(json.dumps(sorted(rows, key=lambda r: r["seed"]), indent=1))
    print(summarize(sorted(rows, key=lambda r: r["seed"])))


if __name__ == "__main__":
    main()
