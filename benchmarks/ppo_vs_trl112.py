"""icegrt-trl's PPOTrainer against trl 1.12.0's `trl.experimental.ppo.PPOTrainer`, side by side.

    python benchmarks/ppo_vs_trl112.py                       # speed (tiny, 4 full models) + memory (113M, LoRA)
    python benchmarks/ppo_vs_trl112.py --speed-sizes tiny 100m --json out.json   # + speed at 113M

Every measurement is one fresh subprocess (`benchmarks/_ppo_bench_worker.py`), and the two implementations
alternate (ours, trl 1.12, ours, trl 1.12, ...) so that load from other processes on a shared machine hits both
alike; ratios are taken between medians. trl 1.12.0 must be installed apart (DEVELOPERS.md):
`pip install --no-deps --target /work/trl112 trl==1.12.0`; it is put first on PYTHONPATH of the baseline
processes only (`--trl112-path`, default `$TRL112_PATH`, else /work/trl112, else /tmp/trl112).

Targets (issue 3):
  speed:  trl 1.12 s/update ÷ ours s/update ≥ 1.3, four full models (policy, ref, reward, value), same tiny
          models and PPO settings.
  memory: ours in LoRA mode (one base: policy adapter, value adapter + head, ref = adapters off; separate reward
          model) ÷ trl 1.12 with four full models ≤ 0.6 in peak RSS, same batch, ≥100M-parameter models.

Prints markdown tables (the ones in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "_ppo_bench_worker.py"


def trl112_default() -> str:
    for p in (os.environ.get("TRL112_PATH"), "/work/trl112", "/tmp/trl112"):
        if p and (Path(p) / "trl" / "experimental" / "ppo").is_dir():
            return p
    return "/work/trl112"


def run_worker(impl: str, mode: str, size: str, updates: int, threads: int, trl112: str, extra=()) -> dict:
    env = dict(os.environ)
    if impl == "trl112":
        env["PYTHONPATH"] = os.pathsep.join([trl112, str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH")
                                                                   else []))
    cmd = [sys.executable, str(WORKER), "--impl", impl, "--mode", mode, "--size", size, "--updates", str(updates),
           "--threads", str(threads), "--phases", *extra]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
        raise RuntimeError(f"worker failed: {' '.join(cmd)} (exit {proc.returncode})")
    res = json.loads(lines[-1][len("RESULT "):])
    if impl == "trl112" and res["trl"] != "1.12.0":
        raise RuntimeError(f"baseline process imported trl {res['trl']}, not 1.12.0 (check --trl112-path)")
    return res


def alternate(pairs: list[tuple[str, str]], size: str, updates: int, n: int, threads: int, trl112: str,
              log=print) -> dict[str, list[dict]]:
    """Run each (impl, mode) in `pairs` in turn, `n` rounds: A, B, A, B, ..."""
    out: dict[str, list[dict]] = {f"{i}/{m}": [] for i, m in pairs}
    for r in range(n):
        for impl, mode in pairs:
            res = run_worker(impl, mode, size, updates, threads, trl112)
            out[f"{impl}/{mode}"].append(res)
            log(f"  round {r + 1}/{n} {impl:6s} {mode:4s} {size:5s}: {res['s_per_update']:.3f} s/update "
                f"(updates {', '.join(f'{x:.3f}' for x in res['update_s'])}; warm-up {res['warmup_s']:.2f} s), "
                f"peak RSS {res['peak_rss_mib']:.0f} MiB")
    return out


def med(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def fmt_list(xs, f="{:.3f}") -> str:
    return ", ".join(f.format(x) for x in xs)


def speed_table(size: str, runs: dict[str, list[dict]]) -> str:
    ours, base = runs["ours/full"], runs["trl112/full"]
    pair = [b["s_per_update"] / o["s_per_update"] for o, b in zip(ours, base)]
    ratio = med(base, "s_per_update") / med(ours, "s_per_update")
    lines = [
        f"**Speed, four full models, size `{size}` ({ours[0]['params_per_model'] / 1e6:.2f}M parameters per model)**",
        "",
        "| | s/update per run (median of the timed updates of that run) | median | timed updates per run |",
        "| --- | --- | --- | --- |",
        f"| icegrt-trl | {fmt_list(r['s_per_update'] for r in ours)} | {med(ours, 's_per_update'):.3f} | "
        f"{len(ours[0]['update_s'])} |",
        f"| trl 1.12.0 | {fmt_list(r['s_per_update'] for r in base)} | {med(base, 's_per_update'):.3f} | "
        f"{len(base[0]['update_s'])} |",
        "",
        f"Speed-up (trl 1.12 median ÷ ours median): **{ratio:.2f}×** (target ≥ 1.3×: "
        f"{'met' if ratio >= 1.3 else 'NOT met'}); per alternation: {fmt_list(pair, '{:.2f}')}× "
        f"(median {statistics.median(pair):.2f}×).",
        "",
        "Raw per-update seconds (warm-up update excluded):",
        "",
    ]
    for name, rs in (("icegrt-trl", ours), ("trl 1.12.0", base)):
        for i, r in enumerate(rs):
            lines.append(f"- {name} run {i + 1}: [{fmt_list(r['update_s'])}] (warm-up {r['warmup_s']:.3f} s)")
    return "\n".join(lines)


def memory_table(size: str, runs: dict[str, list[dict]]) -> str:
    ours, base = runs["ours/lora"], runs["trl112/full"]
    ratio = med(ours, "peak_rss_mib") / med(base, "peak_rss_mib")
    pair = [o["peak_rss_mib"] / b["peak_rss_mib"] for o, b in zip(ours, base)]
    mib = 2**20
    lines = [
        f"**Peak memory, size `{size}` ({ours[0]['params_per_model'] / 1e6:.1f}M parameters per model)**",
        "",
        "| | models held (fp32) | weights MiB | RSS after build MiB | peak RSS per run MiB | median peak MiB | "
        "weights share of peak | s/update per run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, key in (("icegrt-trl, LoRA (policy+value adapters, ref = adapters off) + reward model", "ours/lora"),
                      ("trl 1.12.0, four full models", "trl112/full"), ("trl 1.12.0, LoRA", "trl112/lora"),
                      ("icegrt-trl, four full models", "ours/full")):
        rs = runs.get(key)
        if not rs:
            continue
        w = rs[0]["param_bytes"] / mib
        lines.append(
            f"| {name} | {rs[0]['n_models']} | {w:.0f} | {med(rs, 'rss_after_build_mib'):.0f} | "
            f"{fmt_list((r['peak_rss_mib'] for r in rs), '{:.0f}')} | {med(rs, 'peak_rss_mib'):.0f} | "
            f"{w / med(rs, 'peak_rss_mib'):.0%} | {fmt_list((r['s_per_update'] for r in rs), '{:.1f}')} |")
    lines += [
        "",
        f"Peak-memory ratio (ours LoRA median ÷ trl 1.12 four full models median): **{ratio:.2f}×** (target ≤ 0.6×: "
        f"{'met' if ratio <= 0.6 else 'NOT met'}); per alternation: {fmt_list(pair, '{:.2f}')}×.",
    ]
    return "\n".join(lines)


def median_phases(rs: list[dict]) -> dict:
    names = {k for r in rs for k in r.get("phases", {})}
    return {k: {"s": statistics.median(r["phases"].get(k, {"s": 0.0})["s"] for r in rs),
                "calls": statistics.median(r["phases"].get(k, {"calls": 0})["calls"] for r in rs)} for k in names}


def phase_table(size: str, runs: dict[str, dict]) -> str:
    """runs: column name -> {phase: {"s", "calls"}} (see `median_phases`)."""
    names = sorted({k for r in runs.values() for k in r},
                   key=lambda k: -max(r.get(k, {"s": 0})["s"] for r in runs.values()))
    cols = list(runs)
    head = "| phase (s per update, calls per update) | " + " | ".join(cols) + " |"
    lines = [f"**Where the time goes, {size}** (seconds per timed update, median over the runs above; share of "
             f"the sum; calls per update)", "",
             head, "|" + " --- |" * (len(cols) + 1)]
    for n in names:
        cells = []
        for c in cols:
            p = runs[c].get(n)
            tot = sum(v["s"] for v in runs[c].values())
            cells.append("—" if not p else f"{p['s']:.3f} ({p['s'] / tot:.0%}; {p['calls']:g}×)")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines.append("| **total** | " + " | ".join(
        f"{sum(v['s'] for v in runs[c].values()):.3f}" for c in cols) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--alternations", type=int, default=3)
    p.add_argument("--speed-sizes", nargs="*", default=["tiny"], help="sizes for the speed comparison")
    p.add_argument("--speed-updates", type=int, default=5, help="updates per tiny/small run (first = warm-up)")
    p.add_argument("--large-updates", type=int, default=3, help="updates per 100m run (first = warm-up)")
    p.add_argument("--large-alternations", type=int, default=2, help="alternations of the 100m speed runs")
    p.add_argument("--memory-size", default="100m", help="size for the memory comparison ('' to skip)")
    p.add_argument("--memory-extra", action="store_true",
                   help="also measure trl 1.12 in LoRA mode and ours with four full models (one run each)")
    p.add_argument("--threads", type=int, default=1, help="torch threads in every worker (same on both sides)")
    p.add_argument("--trl112-path", default=trl112_default())
    p.add_argument("--json", help="write every raw result here")
    args = p.parse_args(argv)
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731

    raw, sections = {}, []
    for size in args.speed_sizes:
        large = size == "100m"
        n, ups = (args.large_alternations, args.large_updates) if large else (args.alternations, args.speed_updates)
        log(f"speed, {size}: {n} alternations of ours/trl112, {ups} updates each")
        runs = alternate([("ours", "full"), ("trl112", "full")], size, ups, n, args.threads, args.trl112_path, log)
        raw[f"speed/{size}"] = runs
        if args.json:
            Path(args.json).write_text(json.dumps(raw, indent=1))
        sections.append(speed_table(size, runs))
        sections.append(phase_table(f"size `{size}`, four full models", {"icegrt-trl": median_phases(runs["ours/full"]),
                                           "trl 1.12.0": median_phases(runs["trl112/full"])}))
    if args.memory_size:
        size = args.memory_size
        log(f"memory, {size}: {args.alternations} alternations of ours-LoRA/trl112-full, {args.large_updates} updates")
        runs = alternate([("ours", "lora"), ("trl112", "full")], size, args.large_updates, args.alternations,
                         args.threads, args.trl112_path, log)
        if args.memory_extra:
            runs.update(alternate([("trl112", "lora"), ("ours", "full")], size, args.large_updates, 1, args.threads,
                                  args.trl112_path, log))
        raw[f"memory/{size}"] = runs
        sections.append(memory_table(size, runs))
        sections.append(phase_table(f"size `{size}`, memory runs (ours LoRA, trl 1.12 four full models)",
                                    {"icegrt-trl LoRA": median_phases(runs["ours/lora"]),
                                     "trl 1.12.0 full": median_phases(runs["trl112/full"])}))
    any_run = next(r for v in raw.values() for rs in v.values() for r in (rs if isinstance(rs, list) else [rs]))
    sections.append(f"Versions: torch {any_run['torch']}, transformers {any_run['transformers']}, "
                    f"{args.threads} torch thread(s) per process; command: `python benchmarks/ppo_vs_trl112.py "
                    f"{' '.join(argv if argv is not None else sys.argv[1:])}`")
    print("\n\n".join(sections))
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()
