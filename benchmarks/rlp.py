"""RLP on the testbed, over seeds: the paper's Table 2, Table 5 and the UML ablation, in miniature.

For each seed, the default recipe (SFT → GRM reward model → PPO → RLP-UML and RLP-SPG → eval) runs with that
run seed (same testbed world), then a UML ablation without the SKL term (β = 0: multi-view InfoMax only) refits the
reward model and runs PPO again; a control refits the reward model without RLP (λ = 0: the same initialization and
data as the first one) and runs PPO again, and another does so from a different reward-model seed. From each seed's SPG samples (the PPO policy's 10 samples per unlabeled prompt,
scored by the first reward model) the script also measures how often synthesized pairs agree with the gold reward:
SPG at γ ∈ {0, 0.3, 0.5, 0.7} next to reward-ranked pairs (best vs worst sample by the reward model, no clustering).

    python benchmarks/rlp.py --seeds 0 1 2            # ~8 min per seed on 2 CPU cores
    python benchmarks/rlp.py --summarize              # tables from benchmarks/results/rlp.json

Writes benchmarks/results/rlp.json and prints the markdown tables of docs/rlp.md.
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
GAMMAS = (0.0, 0.3, 0.5, 0.7)
ARMS = (("SFT", "stage:sft"), ("PPO", "stage:ppo"), ("RLP-UML", "stage:rlp_uml/ppo"), ("RLP-SPG", "stage:rlp_spg/ppo"))


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")


def pair_accuracy(pairs, gold_reward) -> tuple[float, int]:
    if not len(pairs):
        return float("nan"), 0
    gc = gold_reward(pairs["prompt"], pairs["chosen"])
    gr = gold_reward(pairs["prompt"], pairs["rejected"])
    right = sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(gc, gr))
    return right / len(gc), len(gc)


def spg_analysis(samples_path: Path) -> dict:
    from datasets import Dataset

    from icegrt_trl.rlp import ExactMatchJudge, synthesize_preferences
    from icegrt_trl.stages.rlp import _testbed_answer
    from icegrt_trl.testbed import gold_reward

    rows = [json.loads(line) for line in samples_path.read_text().splitlines()]
    samples = Dataset.from_list(rows)
    judge = ExactMatchJudge(extract=_testbed_answer)
    out = {}
    for gamma in GAMMAS:
        acc, n = pair_accuracy(synthesize_preferences(samples, judge, gamma=gamma, seed=0), gold_reward)
        out[f"spg_gamma{gamma}"] = {"accuracy": acc, "pairs": n}
    best = {"prompt": [], "chosen": [], "rejected": []}
    for row in rows:
        r = row["rewards"]
        hi, lo = max(range(len(r)), key=r.__getitem__), min(range(len(r)), key=r.__getitem__)
        if r[hi] > r[lo]:
            best["prompt"].append(row["prompt"])
            best["chosen"].append(row["completions"][hi])
            best["rejected"].append(row["completions"][lo])
    acc, n = pair_accuracy(Dataset.from_dict(best), gold_reward)
    out["reward_ranked"] = {"accuracy": acc, "pairs": n}
    return out


def one_seed(seed: int, work: Path) -> dict:
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe["seed"] = seed
    recipe["output_dir"] = str(work / f"seed{seed}")
    path = work / f"recipe_seed{seed}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))  # stage order matters
    exe = str(Path(sys.executable).parent / "icegrt-trl")
    run([exe, "pipeline", str(path)])
    results = json.loads((work / f"seed{seed}" / "results.json").read_text())
    ev, rlp = results["eval"], results["rlp"]
    arms = {}
    for label, spec in ARMS:
        arms[label] = {"gold": ev[f"{spec}/gold_score"], "exact": ev[f"{spec}/exact_match"],
                       "win_vs_sft": ev.get(f"{spec}/win_rate_vs_stage:sft", 0.5)}
    arms["PPO"]["rm_acc"] = rlp["rm_accuracy_on_policy_samples/before"]
    arms["RLP-UML"]["rm_acc"] = rlp["rm_accuracy_on_policy_samples/after_uml"]
    arms["RLP-SPG"]["rm_acc"] = rlp["rm_accuracy_on_policy_samples/after_spg"]
    spg = spg_analysis(work / f"seed{seed}" / "rlp_spg" / "samples.jsonl")
    # UML without the SKL term (β = 0): the multi-view InfoMax ablation
    run([exe, "rlp", str(path), "--methods", "uml", "--uml_beta", "0", "--run_name", "noskl"])
    ablation = json.loads((work / f"seed{seed}" / "results.json").read_text())["rlp"]
    arms["UML-noSKL"] = {"gold": ablation["uml/ppo/gold_score_after"],
                         "rm_acc": ablation["rm_accuracy_on_policy_samples/after_uml"]}
    # control: the same refit and PPO again without RLP (λ = 0: the RM retrains on D alone, exactly as the plugin
    # were absent) — separates what RLP does from what a second reward-model fit and PPO run would do anyway
    run([exe, "rlp", str(path), "--methods", "uml", "--uml_lam", "0", "--run_name", "control"])
    control = json.loads((work / f"seed{seed}" / "results.json").read_text())["rlp"]
    arms["Control"] = {"gold": control["uml/ppo/gold_score_after"],
                       "rm_acc": control["rm_accuracy_on_policy_samples/after_uml"]}
    # how much a different reward-model initialization alone moves PPO (no RLP): the noise RLP must beat
    run([exe, "rlp", str(path), "--methods", "uml", "--uml_lam", "0", "--refit_seed", str(1000 + seed),
         "--run_name", "reseed"])
    reseed = json.loads((work / f"seed{seed}" / "results.json").read_text())["rlp"]
    arms["Reseeded RM"] = {"gold": reseed["uml/ppo/gold_score_after"],
                           "rm_acc": reseed["rm_accuracy_on_policy_samples/after_uml"]}
    return {"arms": arms, "spg": spg, "spg_report": {k: v for k, v in rlp.items() if k.startswith("spg/")
                                                     and "/" not in k[4:]}}


def mean_std(values: list[float]) -> str:
    values = [v for v in values if v == v]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def summarize(data: dict) -> str:
    seeds = sorted(data["seeds"], key=int)
    per = [data["seeds"][s] for s in seeds]
    lines = [f"Seeds: {', '.join(seeds)} (mean ± std over seeds).", "",
             "| policy | gold score | exact match | win-rate vs SFT | RM accuracy on PPO samples |",
             "| --- | --- | --- | --- | --- |"]
    for label in ("SFT", "PPO", "Control", "Reseeded RM", "RLP-UML", "RLP-SPG", "UML-noSKL"):
        col = lambda k: mean_std([p["arms"][label].get(k, float("nan")) for p in per])  # noqa: E731
        lines.append(f"| {label} | {col('gold')} | {col('exact')} | {col('win_vs_sft')} | {col('rm_acc')} |")
    lines += ["", "Per seed, gold score: " + "; ".join(
        f"seed {s}: " + ", ".join(f"{k} {p['arms'][k]['gold']:.3f}" for k in ("PPO", "Control", "Reseeded RM",
                                                                                "RLP-UML", "RLP-SPG", "UML-noSKL"))
        for s, p in zip(seeds, per)), "",
        "| pairs from the PPO policy's samples | agreement with the gold reward | pairs |", "| --- | --- | --- |"]
    for key in ["reward_ranked"] + [f"spg_gamma{g}" for g in GAMMAS]:
        name = "reward-ranked (best vs worst by the RM)" if key == "reward_ranked" else f"SPG, γ = {key[9:]}"
        lines.append(f"| {name} | {mean_std([p['spg'][key]['accuracy'] for p in per])} | "
                     f"{mean_std([p['spg'][key]['pairs'] for p in per])} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--work", default=str(ROOT / "benchmarks" / "_work" / "rlp"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "rlp.json"))
    p.add_argument("--summarize", action="store_true", help="only print the tables of an earlier run")
    a = p.parse_args()
    out = Path(a.out)
    data = json.loads(out.read_text()) if out.exists() else {"seeds": {}}
    if not a.summarize:
        work = Path(a.work)
        work.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        for seed in a.seeds:
            data["seeds"][str(seed)] = one_seed(seed, work)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(data, indent=1))
    print(summarize(data))


if __name__ == "__main__":
    main()
