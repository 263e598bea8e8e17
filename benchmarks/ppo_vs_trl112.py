"""icegrt-trl's PPOTrainer against trl 1.12.0's `trl.experimental.ppo.PPOTrainer`, side by side.

    python benchmarks/ppo_vs_trl112.py                       # speed (tiny, 4 full models) + memory (113M, LoRA)
    python benchmarks/ppo_vs_trl112.py --speed-sizes tiny 100m --json out.json   # + speed at 113M
    python benchmarks/ppo_vs_trl112.py --model smollm2 --json out.json  # SmolLM2-135M-Instruct (issue 12), ~45 min

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
    """One measurement in a fresh process (`extra`: more worker flags)."""
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


def smollm2_main(args, argv) -> None:
    """Issue 12's comparison on SmolLM2-135M-Instruct: fp32 and bf16 with four full models, ours with LoRA on one
    base, utilization of the measured matmul peak, phases, and a sweep over response length and rollout batch."""
    import _smollm2_speed as sm

    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    peak = sm.matmul_peak(args.threads)
    log(f"matmul peak, {args.threads} thread(s): " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peak.items()))
    rows = {  # name -> (impl, mode, worker settings)
        "ours fp32": ("ours", "full", dict(sm.BASE)),
        "trl112 fp32": ("trl112", "full", dict(sm.BASE)),
        "ours bf16": ("ours", "full", dict(sm.BASE, bf16=True)),
        "trl112 bf16": ("trl112", "full", dict(sm.BASE, bf16=True)),
        "ours LoRA bf16": ("ours", "lora", dict(sm.BASE, bf16=True, base_dtype="bfloat16")),
        "ours LoRA bf16, merged generation": ("ours", "lora", dict(sm.BASE, bf16=True, base_dtype="bfloat16",
                                                                    set=["merge_adapter_for_generation=true"])),
        "ours LoRA bf16, merged generation, checkpointing": (
            "ours", "lora", dict(sm.BASE, bf16=True, base_dtype="bfloat16", gradient_checkpointing=True,
                                 set=["merge_adapter_for_generation=true"])),
        "ours bf16, value head on the policy": ("ours", "full", dict(sm.BASE, bf16=True,
                                                                      set=["value_head_on_policy=true"])),
        # share_prompt_prefix off: every row runs the chat template's 24-token system turn itself
        "ours fp32, prefix not shared": ("ours", "full", dict(sm.BASE, set=["share_prompt_prefix=false"])),
        "ours bf16, prefix not shared": ("ours", "full", dict(sm.BASE, bf16=True, set=["share_prompt_prefix=false"])),
        # cpu_keep_freed_memory off in ours, and the same allocator setting given to trl 1.12's process
        "ours fp32, freed memory returned": ("ours", "full", dict(sm.BASE, set=["cpu_keep_freed_memory=false"])),
        "trl112 fp32, freed memory kept": ("trl112", "full", dict(sm.BASE, keep_freed_memory=True)),
        "ours bf16, freed memory returned": ("ours", "full", dict(sm.BASE, bf16=True,
                                                                   set=["cpu_keep_freed_memory=false"])),
        # transformers' eager attention (key/value heads copied per query head) instead of our grouped one
        "ours bf16, transformers' eager attention": ("ours", "full", dict(sm.BASE, bf16=True,
                                                                           plain_eager_attention=True)),
        # cpu_bf16_padding_free off: the rows run with their left padding
        "ours bf16, padded rows": ("ours", "full", dict(sm.BASE, bf16=True, set=["cpu_bf16_padding_free=false"])),
    }
    if args.full_length:
        rows = {k: (impl, mode, dict(row, full_length=True)) for k, (impl, mode, row) in rows.items()}
    if args.rows:
        unknown = set(args.rows) - set(rows)
        if unknown:
            raise SystemExit(f"--rows: unknown {sorted(unknown)}; the rows are {list(rows)}")
        rows = {k: v for k, v in rows.items() if k in args.rows}
    raw: dict = {"peak_gflops": peak, "main": {k: [] for k in rows}, "sweep": {}, "full_length": args.full_length}
    if args.resume and args.json and Path(args.json).is_file():  # keep the runs an interrupted invocation saved
        saved = json.loads(Path(args.json).read_text())
        raw["peak_gflops"] = saved["peak_gflops"]
        raw["main"].update({k: v for k, v in saved["main"].items() if k in rows})
        raw["sweep"] = saved.get("sweep", {})

    def save():
        if args.json:
            Path(args.json).write_text(json.dumps(raw, indent=1))

    def run(name, impl, mode, row):
        res = run_worker(impl, mode, "smollm2", args.large_updates, args.threads, args.trl112_path,
                         sm.worker_args(row))
        log(f"  {name:16s} {row}: {res['s_per_update']:.2f} s/update (updates "
            f"{', '.join(f'{x:.2f}' for x in res['update_s'])}), peak RSS {res['peak_rss_mib']:.0f} MiB")
        return res

    for r in range(args.large_alternations):
        for name, (impl, mode, row) in rows.items():
            if len(raw["main"][name]) > r:
                continue
            raw["main"][name].append(run(name, impl, mode, row))
            save()
    if args.sweep:
        base = dict(sm.BASE, full_length=True) if args.full_length else sm.BASE
        points = [dict(base, response_length=n) for n in (48, 96)] + [dict(base, batch=b) for b in (4, 16)]
        for row in points:
            key = f"B{row['batch']}_R{row['response_length']}"
            if key in raw["sweep"]:
                continue
            raw["sweep"][key] = {impl: run(f"{impl} {key}", impl, "full", row) for impl in ("ours", "trl112")}
            save()
    print(smollm2_report(raw, args, argv, sm))
    save()


def smollm2_report(raw: dict, args, argv, sm) -> str:
    peak, main = raw["peak_gflops"], raw["main"]
    med_s = {k: sm.median(r["s_per_update"] for r in v) for k, v in main.items() if v}
    med_m = {k: sm.median(r["peak_rss_mib"] for r in v) for k, v in main.items() if v}
    lines = [f"**PPO on SmolLM2-135M-Instruct** (batch {sm.BASE['batch']}, {sm.BASE['response_length']} new tokens, "
             f"{sm.BASE['ppo_epochs']} PPO epochs, one mini-batch; {args.threads} torch threads; matmul peak here: "
             + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peak.items()) + ")", "",
             "| row | s/update per run | median | vs trl 1.12 same row | peak RSS MiB | model GFLOP/update | "
             "achieved GFLOP/s | utilization of the dtype's peak |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    baseline = {name: "trl112 fp32" for name in main if name.startswith("ours LoRA")}
    baseline.update({"ours fp32": "trl112 fp32", "ours bf16": "trl112 bf16",
                     "ours bf16, value head on the policy": "trl112 bf16"})
    for name, rs in main.items():
        if not rs:
            continue
        f = sm.row_figures({**rs[0], "s_per_update": med_s[name]}, peak)
        vs = f"{med_s[baseline[name]] / med_s[name]:.2f}×" if name in baseline and baseline[name] in med_s else "—"
        lines.append(f"| {name} | {fmt_list((r['s_per_update'] for r in rs), '{:.2f}')} | {med_s[name]:.2f} | {vs} | "
                     f"{med_m[name]:.0f} | {f['gflop']:.0f} | {f['gflops']:.0f} ({f['dtype']}) | {f['util']:.1%} |")
    for name in (n for n in med_m if n.startswith("ours LoRA") and "trl112 fp32" in med_m):
        lines += ["", f"{name} ÷ trl 1.12 four full fp32 models: peak memory "
                      f"**{med_m[name] / med_m['trl112 fp32']:.2f}×** (target ≤ 0.35×), speed "
                      f"**{med_s['trl112 fp32'] / med_s[name]:.2f}×** (target ≥ 1.5×)."]
    groups = {k: sm.phase_groups(median_phases(v)) for k, v in main.items() if v and v[0].get("phases")}
    if groups:
        names = list(next(iter(groups.values())))
        lines += ["", "**Where the time goes** (s per update, median phases; PhaseTimer of the worker)", "",
                  "| phase | " + " | ".join(groups) + " |", "|" + " --- |" * (len(groups) + 1)]
        for n in names:
            lines.append(f"| {n} | " + " | ".join(f"{g[n]:.2f} ({g[n] / sum(g.values()):.0%})"
                                                 for g in groups.values()) + " |")
        first = next(v[0] for v in main.values() if v)  # every row runs the same model and prompts
        lines += ["", "Model GFLOP per update by phase (same for both trainers): " + ", ".join(
            f"{k} {v / 1e9:.0f}" for k, v in sm.update_flops(
                first["model_config"], sm.BASE["batch"], first["mean_prompt_tokens"],
                sm.BASE["response_length"], sm.BASE["ppo_epochs"], False).items())]
    if raw.get("sweep"):
        lines += ["", sweep_section(raw, sm)]
    lines += ["", f"Command: `python benchmarks/ppo_vs_trl112.py {' '.join(argv if argv is not None else sys.argv[1:])}`"]
    return "\n".join(lines)


def sweep_section(raw: dict, sm) -> str:
    """Seconds, peak memory and phases per update against response length and batch (fp32, four full models), plus a
    PNG plot next to docs/benchmarks.md."""
    pts = {"B8_R24": {"ours": raw["main"]["ours fp32"][0], "trl112": raw["main"]["trl112 fp32"][0]}}
    pts.update(raw["sweep"])
    lines = ["**Cost against response length and rollout batch** (fp32, four full models, one run per point)", "",
             "| batch | new tokens | ours s/update | trl 1.12 s/update | ours peak MiB | trl 1.12 peak MiB | ours: "
             "generation / rollout fwd / training s |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for key in sorted(pts, key=lambda k: (int(k.split("_")[0][1:]), int(k.split("_R")[1]))):
        o, t = pts[key]["ours"], pts[key]["trl112"]
        g = sm.phase_groups(o.get("phases", {}))
        lines.append(f"| {o['settings']['per_device_train_batch_size']} | {o['settings']['response_length']} | "
                     f"{o['s_per_update']:.2f} | {t['s_per_update']:.2f} | {o['peak_rss_mib']:.0f} | "
                     f"{t['peak_rss_mib']:.0f} | {g['generation']:.2f} / {g['rollout forwards']:.2f} / "
                     f"{g['training (fwd+bwd+step)']:.2f} |")
    try:
        plot_sweep(pts, sm)
        lines += ["", "![PPO cost against response length and batch](ppo_scaling_smollm2.png)"]
    except ImportError:
        pass
    return "\n".join(lines)


def plot_sweep(pts: dict, sm) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, fixed, var, label in ((axes[0], "B8", "R", "new tokens (batch 8)"),
                                  (axes[1], "R24", "B", "rollout batch (24 new tokens)")):
        keys = sorted((k for k in pts if fixed in k.split("_")),
                      key=lambda k: int(k.split("_")[0 if var == "B" else 1][1:]))
        xs = [int(k.split("_")[0 if var == "B" else 1][1:]) for k in keys]
        for impl, style in (("ours", "o-"), ("trl112", "s--")):
            ax.plot(xs, [pts[k][impl]["s_per_update"] for k in keys], style,
                    label="icegrt-trl" if impl == "ours" else "trl 1.12")
        for phase, style in (("generation", ":"), ("rollout forwards", "-."), ("training (fwd+bwd+step)", ":")):
            ax.plot(xs, [sm.phase_groups(pts[k]["ours"].get("phases", {}))[phase] for k in keys], style,
                    alpha=0.6, label=f"ours: {phase}")
        ax.set_xlabel(label)
        ax.set_ylabel("s per update")
        ax.set_xticks(xs)
        ax.legend(fontsize=7)
    keys = sorted(pts, key=lambda k: (int(k.split("_")[0][1:]), int(k.split("_R")[1])))
    for impl, style in (("ours", "o"), ("trl112", "s")):
        axes[2].plot([f"{k}" for k in keys], [pts[k][impl]["peak_rss_mib"] / 1024 for k in keys], style,
                     label="icegrt-trl" if impl == "ours" else "trl 1.12")
    axes[2].set_ylabel("peak RSS GiB")
    axes[2].tick_params(axis="x", rotation=30)
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(ROOT / "docs" / "ppo_scaling_smollm2.png", dpi=110)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["testbed", "smollm2"], default="testbed",
                   help="smollm2: issue 12's comparison on SmolLM2-135M-Instruct (uses --large-updates, "
                        "--large-alternations, --threads)")
    p.add_argument("--sweep", action="store_true", help="smollm2: also sweep response length and batch")
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
    p.add_argument("--full-length", action="store_true",
                   help="smollm2: equal work, every sample runs to response_length in both trainers (no stop token)")
    p.add_argument("--rows", nargs="*", help="smollm2: run only these rows (names as printed)")
    p.add_argument("--resume", action="store_true",
                   help="smollm2: keep the runs already in --json and run only the missing ones")
    args = p.parse_args(argv)
    if args.model == "smollm2":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        return smollm2_main(args, argv)
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
