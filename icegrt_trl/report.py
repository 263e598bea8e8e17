"""`report.md`: the figures of every stage of a run, in the order the stages ran."""

from __future__ import annotations

import platform

import torch

from .stages.base import RunContext


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render_report(ctx: RunContext) -> str:
    lines = [f"# icegrt-trl run report: {ctx.recipe.name}", ""]
    if ctx.recipe.description:
        lines += [ctx.recipe.description.strip(), ""]
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    lines += [
        f"- recipe: `{ctx.recipe.path}`",
        f"- output_dir: `{ctx.output_dir}`",
        f"- machine: {platform.machine()} {device}, torch {torch.__version__}",
        "",
    ]
    summary = rlp_summary(ctx.results)
    if summary:
        lines += ["## RLP at a glance", "",
                  "Held-out prompts, greedy decoding, judged by the gold reward. RM accuracy: the reward model's "
                  "pairwise accuracy on gold-labelled pairs of the PPO policy's own samples (held-out prompts) — the "
                  "first reward model for SFT/PPO, the refit one for each RLP method.", "",
                  "| policy | gold score | exact match | win-rate vs the first row | RM accuracy on PPO samples |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {row['policy']} | {_fmt(row['gold'])} | {_fmt(row['exact'])} | {_fmt(row['win'])} | "
                  f"{_fmt(row['rm_acc'])} |" for row in summary]
        lines += ["", f"![RLP at a glance]({RLP_PLOT})", ""]
    curves = curve_files(ctx.output_dir)
    if curves:
        lines += ["## Training curves", "",
                  "Per PPO run: the reward model's score of the rollouts, KL to the reference, the KL coefficient, and the "
                  "gold score of greedy completions on held-out prompts where judged (judge_every_rollouts).", ""]
        lines += [f"![{run}]({png})" for run, png in curves]
        lines.append("")
    lines += samples_section(ctx.stage_dir("eval") / "samples.jsonl")
    for stage, figures in ctx.results.items():
        lines += [f"## {stage}", "", "| figure | value |", "| --- | --- |"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in figures.items()]
        lines.append("")
    return "\n".join(lines)


RLP_PLOT = "report_rlp.png"
_RLP_ROWS = (("PPO", "stage:ppo", "before"), ("RLP-UML", "stage:rlp_uml/ppo", "after_uml"),
             ("RLP-SPG", "stage:rlp_spg/ppo", "after_spg"))


def rlp_summary(results: dict) -> list[dict]:
    """The reference policy (SFT, or the initial model), PPO and each RLP method side by side, from the eval and rlp
    stages' figures (empty without them)."""
    ev, rlp = results.get("eval", {}), results.get("rlp", {})
    if not rlp or not ev:
        return []
    ref = ev.get("reference_policy", "stage:sft")
    label = "SFT" if ref == "stage:sft" else f"initial ({ref})"
    rows = []
    for name, spec, acc_key in ((label, ref, None),) + _RLP_ROWS:
        if f"{spec}/gold_score" not in ev:
            continue
        rows.append({"policy": name, "gold": ev[f"{spec}/gold_score"], "exact": ev.get(f"{spec}/exact_match", ""),
                     "win": ev.get(f"{spec}/win_rate_vs_{ref}", 0.5 if spec == ref else ""),
                     "rm_acc": rlp.get(f"rm_accuracy_on_policy_samples/{acc_key}", "") if acc_key else ""})
    return rows


def plot_rlp_summary(rows: list[dict], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("gold", "gold score"), ("exact", "exact match"), ("win", "win-rate vs first row"),
               ("rm_acc", "RM accuracy on PPO samples")]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.8 / len(rows)
    for i, row in enumerate(rows):
        xs = [j + i * width for j in range(len(metrics))]
        ys = [row[k] if isinstance(row[k], (int, float)) else 0.0 for k, _ in metrics]
        ax.bar(xs, ys, width, label=row["policy"])
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(metrics))], [m for _, m in metrics])
    ax.set_ylim(0, 1)
    ax.axhline(0.5, color="grey", lw=0.5, ls="--")
    ax.legend(ncol=len(rows), fontsize=8, loc="upper left")
    ax.set_title("RLP at a glance (held-out prompts, gold judge)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


SAMPLES_SHOWN = 3


def samples_section(path) -> list[str]:
    """The first `SAMPLES_SHOWN` judged completions of each policy (the eval stage writes them all)."""
    import json

    if not path.is_file():
        return []
    shown: dict[str, list[dict]] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        group = shown.setdefault(row["policy"], [])
        if len(group) < SAMPLES_SHOWN:
            group.append(row)
    lines = ["## Samples (greedy, held-out prompts)", "", "| policy | prompt | completion | gold |", "| --- | --- | --- | --- |"]
    for policy, rows in shown.items():
        for row in rows:
            prompt = row["prompt"][-1]["content"] if isinstance(row["prompt"], list) else row["prompt"]
            cells = [policy, prompt, row["completion"].strip()]
            cells = [c.replace("|", "\\|").replace("\n", " ") for c in cells]
            lines.append(f"| {cells[0]} | {cells[1]} | {cells[2]} | {row['gold']:.2f} |")
    return lines + [""]


LOG_HISTORY_FILE = "log_history.json"
CURVES = (("objective/scores", "reward-model score"), ("objective/kl", "KL to reference"),
          ("objective/kl_coef", "KL coefficient"), ("gold/score", "gold score (held-out, greedy)"))


def write_log_history(folder, log_history: list[dict]) -> None:
    """The trainer's log history beside the model, for the report's training curves."""
    import json
    from pathlib import Path

    (Path(folder) / LOG_HISTORY_FILE).write_text(json.dumps(log_history, indent=1, default=str))


def _curve_name(run_dir, root) -> str:
    return str(run_dir.relative_to(root)).replace("/", "_")


def curve_files(root) -> list[tuple[str, str]]:
    """(run, png) of every PPO run under `root` with a log history, in a stable order."""
    out = [(_curve_name(f.parent, root), f"report_curves_{_curve_name(f.parent, root)}.png")
           for f in sorted(root.glob(f"**/{LOG_HISTORY_FILE}"))]
    return [(run, png) for run, png in out if (root / png).is_file()]


def curve_series(log_history: list[dict]) -> dict[str, tuple[list, list]]:
    """metric -> (steps, values) for each metric of `CURVES` that the history holds."""
    out: dict[str, tuple[list, list]] = {}
    for key, _ in CURVES:
        points = [(e["step"], e[key]) for e in log_history if key in e and "step" in e]
        if points:
            out[key] = ([p[0] for p in points], [float(p[1]) for p in points])
    return out


def plot_training_curves(log_history: list[dict], path, title: str) -> bool:
    """One row of panels (reward, KL, KL coefficient, gold); False when the history holds none of them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = curve_series(log_history)
    if not series:
        return False
    panels = [(k, label) for k, label in CURVES if k in series]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 2.8), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        steps, values = series[key]
        ax.plot(steps, values, marker="o" if len(steps) < 30 else None, ms=3)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("optimizer step", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_curves(ctx: RunContext) -> None:
    import json

    for f in sorted(ctx.output_dir.glob(f"**/{LOG_HISTORY_FILE}")):
        name = _curve_name(f.parent, ctx.output_dir)
        plot_training_curves(json.loads(f.read_text()), ctx.output_dir / f"report_curves_{name}.png", name)


def write_report(ctx: RunContext) -> None:
    write_curves(ctx)
    rows = rlp_summary(ctx.results)
    if rows:
        plot_rlp_summary(rows, ctx.output_dir / RLP_PLOT)
    (ctx.output_dir / "report.md").write_text(render_report(ctx))
