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
    for stage, figures in ctx.results.items():
        lines += [f"## {stage}", "", "| figure | value |", "| --- | --- |"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in figures.items()]
        lines.append("")
    return "\n".join(lines)


def write_report(ctx: RunContext) -> None:
    (ctx.output_dir / "report.md").write_text(render_report(ctx))
