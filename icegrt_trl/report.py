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
                  "| policy | gold score | exact match | win-rate vs SFT | RM accuracy on PPO samples |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {row['policy']} | {_fmt(row['gold'])} | {_fmt(row['exact'])} | {_fmt(row['win'])} | "
                  f"{_fmt(row['rm_acc'])} |" for row in summary]
        lines += ["", f"![RLP at a glance]({RLP_PLOT})", ""]
    for stage, figures in ctx.results.items():
        lines += [f"## {stage}", "", "| figure | value |", "| --- | --- |"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in figures.items()]
        lines.append("")
    return "\n".join(lines)


RLP_PLOT = "report_rlp.png"
_RLP_ROWS = (("SFT", "stage:sft", None), ("PPO", "stage:ppo", "before"), ("RLP-UML", "stage:rlp_uml/ppo", "after_uml"),
             ("RLP-SPG", "stage:rlp_spg/ppo", "after_spg"))


def rlp_summary(results: dict) -> list[dict]:
    """SFT, PPO and each RLP method side by side, from the eval and rlp stages' figures (empty without them)."""
    ev, rlp = results.get("eval", {}), results.get("rlp", {})
    if not rlp or not ev:
        return []
    rows = []
    for label, spec, acc_key in _RLP_ROWS:
        if f"{spec}/gold_score" not in ev:
            continue
        rows.append({"policy": label, "gold": ev[f"{spec}/gold_score"], "exact": ev.get(f"{spec}/exact_match", ""),
                     "win": ev.get(f"{spec}/win_rate_vs_stage:sft", 0.5 if spec == "stage:sft" else ""),
                     "rm_acc": rlp.get(f"rm_accuracy_on_policy_samples/{acc_key}", "") if acc_key else ""})
    return rows


def plot_rlp_summary(rows: list[dict], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("gold", "gold score"), ("exact", "exact match"), ("win", "win-rate vs SFT"),
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


def write_report(ctx: RunContext) -> None:
    rows = rlp_summary(ctx.results)
    if rows:
        plot_rlp_summary(rows, ctx.output_dir / RLP_PLOT)
    (ctx.output_dir / "report.md").write_text(render_report(ctx))
