"""The memory plan (`icegrt-trl plan`) against measured peaks, stage by stage.

Each stage of a recipe runs in its own process (`icegrt-trl pipeline RECIPE --stages NAME`, with the recipe's batch
sizes and lengths; only step and prompt counts shrink) and its peak resident memory is read from the kernel
(`wait4`'s ru_maxrss). On a GPU the script also reads `torch.cuda.max_memory_allocated` through a small wrapper.
The plan is computed for the same recipe with the prompt length the data has.

    python benchmarks/plan_vs_measured.py recipes/tiny-offline.yaml --prompt-length 16
    python benchmarks/plan_vs_measured.py recipes/smollm2-cpu.yaml --prompt-length 64 \
        --override sample_preferences.num_prompts=32 --override ppo.max_steps=2 --override rlp.num_prompts=16 ...

Prints a markdown table (stage, plan GiB, measured peak GiB, ratio) and appends it to
benchmarks/results/plan_vs_measured.json. `--replan` recomputes the plan column of the stored measurements after a
change to the plan, keeping the first plan beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "plan_vs_measured.json"
GPU_WRAPPER = """
import sys, torch, runpy
sys.argv = sys.argv[1:]
try:
    runpy.run_module("icegrt_trl.cli", run_name="__main__")
finally:
    if torch.cuda.is_available():
        print("PEAK_CUDA_BYTES", torch.cuda.max_memory_allocated(), file=sys.stderr)
"""


def peak_of(cmd: list[str]) -> tuple[int, int | None, int]:
    """(peak RSS bytes, peak CUDA bytes or None, return code) of one process."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read()
    cuda = None
    for line in err.splitlines():
        if line.startswith("PEAK_CUDA_BYTES"):
            cuda = int(line.split()[1])
    code = os.waitstatus_to_exitcode(status)
    if code:
        print(err[-3000:], file=sys.stderr)
    return usage.ru_maxrss * 1024, cuda, code


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("recipe", nargs="?", help="the recipe to measure (not needed with --replan)")
    p.add_argument("--prompt-length", type=int, default=64)
    p.add_argument("--override", action="append", default=[], help="stage.option=value, e.g. ppo.max_steps=2")
    p.add_argument("--workdir", default=None)
    p.add_argument("--replan", action="store_true",
                   help="recompute the plan column of the stored measurements with the current plan (no runs); the "
                        "previous plan is kept as plan_gib_before")
    args = p.parse_args()

    from icegrt_trl.plan import GiB, plan_recipe
    from icegrt_trl.recipe import load_recipe, recipe_from_dict
    from icegrt_trl.stages.base import RunContext

    if args.replan:
        return replan()
    if not args.recipe:
        p.error("give a recipe (or --replan)")
    recipe_dict = recipe_with_overrides(args.recipe, args.override)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="plan-vs-measured-"))
    recipe_dict["output_dir"] = str(work / "run")
    path = work / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe_dict, sort_keys=False))
    recipe = load_recipe(path)
    baseline, _, _ = peak_of([sys.executable, "-c", "import torch, transformers, trl, peft, icegrt_trl.cli"])
    rows = []
    for name in recipe.stages:
        cmd = [sys.executable, "-c", GPU_WRAPPER, "icegrt-trl", "pipeline", str(path), "--stages", name,
               "--skip-memory-check"]
        rss, cuda, code = peak_of(cmd)
        if code:
            sys.exit(f"stage {name} failed")
        ctx = RunContext.from_recipe(recipe_from_dict(recipe_dict, path))
        plans = {pl.stage.split()[0]: pl for pl in plan_recipe(recipe, ctx, prompt_length=args.prompt_length)}
        plan = plans.get(name)
        rows.append({"stage": name, "plan_gib": round(plan.total / GiB, 3) if plan else None,
                     "rss_gib": round(rss / GiB, 3), "cuda_gib": round(cuda / GiB, 3) if cuda else None})
        print(rows[-1], flush=True)
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU {platform.machine()}, {os.cpu_count()} cores"
    entry = {"recipe": args.recipe, "overrides": args.override, "prompt_length": args.prompt_length, "device": device,
             "baseline_rss_gib": round(baseline / GiB, 3), "stages": rows}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    old = [e for e in old if (e["recipe"], e["device"]) != (entry["recipe"], entry["device"])]
    RESULTS.write_text(json.dumps(old + [entry], indent=1))
    print_table(entry)


def recipe_with_overrides(recipe_path: str, overrides: list[str]) -> dict:
    recipe_dict = yaml.safe_load(Path(recipe_path).read_text())
    for item in overrides:
        key, value = item.split("=", 1)
        stage, option = key.split(".", 1)
        target = recipe_dict["testbed"] if stage == "testbed" else recipe_dict["stages"][stage]
        target[option] = yaml.safe_load(value)
    return recipe_dict


def print_table(entry: dict) -> None:
    rows = entry["stages"]
    measured = "GPU peak allocated" if any(r["cuda_gib"] for r in rows) else "peak RSS"
    before = any("plan_gib_before" in r for r in rows)
    print(f"\n{entry['recipe']} on {entry['device']} (baseline RSS of the imports: {entry['baseline_rss_gib']} GiB)\n")
    print(f"| stage | {'first plan (GiB) | ' if before else ''}plan (GiB) | {measured} (GiB) | measured / plan |")
    print("| --- | " + ("--- | " if before else "") + "--- | --- | --- |")
    for r in rows:
        got = r["cuda_gib"] or r["rss_gib"]
        ratio = f"{got / r['plan_gib']:.2f}" if r["plan_gib"] else "–"
        first = f"{r.get('plan_gib_before', '–')} | " if before else ""
        print(f"| {r['stage']} | {first}{r['plan_gib']} | {got} | {ratio} |")


def replan() -> None:
    from icegrt_trl.plan import GiB, plan_recipe
    from icegrt_trl.recipe import recipe_from_dict
    from icegrt_trl.stages.base import RunContext

    entries = json.loads(RESULTS.read_text())
    for entry in entries:
        recipe_dict = recipe_with_overrides(entry["recipe"], entry["overrides"])
        recipe_dict["output_dir"] = tempfile.mkdtemp(prefix="replan-")
        recipe = recipe_from_dict(recipe_dict, Path(entry["recipe"]))
        plans = {pl.stage.split()[0]: pl for pl in plan_recipe(recipe, RunContext.from_recipe(recipe),
                                                               prompt_length=entry["prompt_length"])}
        for r in entry["stages"]:
            r.setdefault("plan_gib_before", r["plan_gib"])
            r["plan_gib"] = round(plans[r["stage"]].total / GiB, 3) if r["stage"] in plans else None
        print_table(entry)
    RESULTS.write_text(json.dumps(entries, indent=1))


if __name__ == "__main__":
    main()
