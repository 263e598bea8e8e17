"""`icegrt-trl`: run recipe stages from the command line.

    icegrt-trl sft recipes/tiny-offline.yaml --learning_rate 1e-3
    icegrt-trl pipeline recipes/tiny-offline.yaml --output_dir runs/try --sft.num_train_epochs 2
    icegrt-trl <command> --help

A stage command reads its section of the recipe into the stage's dataclasses (TRL's own configs where
they exist), then applies command-line overrides, as `TrlParser` does with `--config`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .recipe import Recipe, RecipeError, load_recipe
from .stages import STAGE_REGISTRY, StageNotAvailable, get_stage
from .stages.base import RunContext, Stage, apply_env, check_section_keys, run_stage, section_for
from .vllm_serve import VLLMNotInstalled

STAGE_COMMANDS = tuple(STAGE_REGISTRY)
COMMANDS = STAGE_COMMANDS + ("pipeline", "plan", "vllm-serve")
PIPELINE_HELP = "run every stage of a recipe and write report.md"
PLAN_HELP = "memory plan of each stage of a recipe, and whether it fits a GPU (loads nothing)"
VLLM_SERVE_HELP = "start a vLLM server for PPO rollouts (PPOConfig.use_vllm), with the settings the trainer expects"


class CLIError(Exception):
    """A usage problem reported as `icegrt-trl: error: ...` with exit status 2."""


def _split_recipe(argv: list[str]) -> tuple[str | None, list[str]]:
    if argv and not argv[0].startswith("-"):
        return argv[0], argv[1:]
    return None, argv


def _pop_option(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
            del argv[i:i + 2]
            return value
        if arg.startswith(name + "="):
            del argv[i]
            return arg.split("=", 1)[1]
    return None


def _coerce(parser, section: dict) -> dict:
    """YAML reads `3e-3` as a string; convert scalars with the parser's own types, as the CLI would."""
    types = {a.dest: a.type for a in parser._actions if callable(a.type)}
    out = {}
    for key, value in section.items():
        t = types.get(key)
        if isinstance(value, str) and t is not None and t is not str:
            try:
                value = t(value)
            except (TypeError, ValueError) as err:
                raise RecipeError(f"Option '{key}': cannot read {value!r}: {err}") from None
        out[key] = value
    return out


def parse_stage_configs(stage: Stage, recipe: Recipe, ctx: RunContext, argv: Sequence[str]) -> tuple:
    """Recipe section → stage dataclasses, with `argv` overriding the recipe. Raises before any training."""
    from trl import TrlParser

    section = section_for(recipe, stage)
    check_section_keys(section, stage, recipe)
    if "output_dir" in section:
        raise RecipeError(
            f"Stage '{stage.name}' sets output_dir; set the run's output_dir at the recipe's top level "
            "(or --output_dir): each stage writes to <output_dir>/<stage>."
        )
    parser = TrlParser(stage.config_classes, prog=f"icegrt-trl {stage.name}")
    field_names = {a.dest for a in parser._actions}
    if "output_dir" in field_names:
        section["output_dir"] = str(ctx.stage_dir(stage.name))
    parser.set_defaults_with_config(**_coerce(parser, section))
    try:
        configs = parser.parse_args_into_dataclasses(args=list(argv))
    except SystemExit as exit_:
        raise CLIError(f"bad command-line options for stage '{stage.name}' (see above)") from exit_
    except (ValueError, TypeError) as err:  # a config's own validation (__post_init__): one message, no traceback
        raise RecipeError(f"stage '{stage.name}': {err}") from None
    return tuple(configs)


def _stage_help(name: str) -> None:
    stage = get_stage(name)
    from trl import TrlParser

    parser = TrlParser(stage.config_classes, prog=f"icegrt-trl {name}",
                       description=f"{stage.help} Options come from the recipe's 'stages: {name}:' section; "
                                   "the command line overrides them.")
    parser.print_help()


def run_stage_command(name: str, argv: list[str]) -> dict:
    if "-h" in argv or "--help" in argv:
        _stage_help(name)
        return {}
    recipe_path, rest = _split_recipe(argv)
    output_dir = _pop_option(rest, "--output_dir")
    if recipe_path is None:  # flags alone, as TRL's scripts: `icegrt-trl reward --model_name_or_path ... --dataset_name ...`
        if output_dir is None:
            raise CLIError(f"icegrt-trl {name} without a recipe needs --output_dir (where <output_dir>/{name}/ is "
                           f"written), e.g. icegrt-trl {name} --output_dir runs/{name} --model_name_or_path ...")
        from .recipe import recipe_from_dict

        recipe = recipe_from_dict({"output_dir": output_dir, "stages": {name: {}}})
    else:
        recipe = load_recipe(recipe_path)
    stage = get_stage(name)
    apply_env(recipe)
    ctx = RunContext.from_recipe(recipe, output_dir)
    configs = parse_stage_configs(stage, recipe, ctx, rest)
    figures = run_stage(stage, ctx, configs)
    from .report import write_report

    write_report(ctx)
    return figures


def _pipeline_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="icegrt-trl pipeline",
        description="Run the recipe's stages in the order it lists them (e.g. SFT → reward → PPO → eval), each in "
                    "<output_dir>/<stage>/, then write <output_dir>/report.md. Per-stage overrides: "
                    "--<stage>.<option> value, e.g. --sft.learning_rate 1e-3.",
    )
    p.add_argument("recipe", help="YAML recipe, e.g. recipes/tiny-offline.yaml")
    p.add_argument("--output_dir", default=None, help="run folder (default: the recipe's output_dir)")
    p.add_argument("--stages", default=None, help="comma-separated subset of the recipe's stages to run")
    p.add_argument("--skip-memory-check", action="store_true",
                   help="on a GPU, run even when the memory plan says a stage does not fit (icegrt-trl plan)")
    return p


def _plan_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="icegrt-trl plan", description=PLAN_HELP + ". Estimates from the configs: "
                                "weights, gradients and AdamW states, activations, logits, the rollout's KV cache.")
    p.add_argument("recipe", help="YAML recipe, e.g. recipes/qwen2.5-7b-qlora.yaml")
    p.add_argument("--gpu-memory", default=None, help="memory of one GPU, e.g. 24GB (default: this machine's GPU, "
                   "if any); the command exits 1 when a stage does not fit")
    p.add_argument("--prompt-length", type=int, default=256,
                   help="prompt tokens assumed for PPO and sampling when the recipe sets no max_prompt_length")
    p.add_argument("--output_dir", default=None, help="run folder whose saved stages resolve stage: models")
    return p


def run_plan(argv: list[str]) -> int:
    from .plan import GiB, parse_memory, plan_recipe, render_plan

    args = _plan_parser().parse_args(argv)
    recipe = load_recipe(args.recipe)
    ctx = RunContext.from_recipe(recipe, args.output_dir)
    budget = parse_memory(args.gpu_memory) or _gpu_memory()
    plans = plan_recipe(recipe, ctx, prompt_length=args.prompt_length)
    print(f"Memory plan of {recipe.path} (estimates, peak per stage)" +
          (f", one GPU of {budget / GiB:.0f} GiB" if budget else ""))
    print(render_plan(plans, budget))
    return 1 if budget and any(p.total > budget for p in plans) else 0


def _gpu_memory() -> int | None:
    import torch

    return torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else None


def _check_memory_plan(recipe, ctx, names: list[str]) -> None:
    """On a GPU: refuse a recipe whose memory plan exceeds the device before any stage loads a model."""
    import logging

    from .plan import PlanError, check_fits, plan_recipe

    budget = _gpu_memory()
    if budget is None:
        return
    try:
        plans = plan_recipe(recipe, ctx)
    except PlanError as err:  # an architecture the plan cannot read offline: no verdict, no refusal
        logging.getLogger(__name__).warning("No memory plan: %s", err)
        return
    check_fits([p for p in plans if p.stage.split()[0] in names], budget)


def run_pipeline(argv: list[str]) -> dict:
    parser = _pipeline_parser()
    args, rest = parser.parse_known_args(argv)
    recipe = load_recipe(args.recipe)
    overrides: dict[str, list[str]] = {}
    it = iter(rest)
    for arg in it:
        key, _, value = arg.partition("=")
        if not key.startswith("--") or "." not in key:
            raise CLIError(f"unrecognized pipeline option {arg!r}; per-stage options are --<stage>.<option> value")
        stage_name, option = key[2:].split(".", 1)
        if stage_name not in recipe.stages:
            raise CLIError(f"override {key!r} names stage {stage_name!r}, which the recipe does not run")
        overrides.setdefault(stage_name, []).extend([f"--{option}", value or next(it, "")])
    names = list(recipe.stages)
    if args.stages:
        names = [s.strip() for s in args.stages.split(",")]
        missing = [s for s in names if s not in recipe.stages]
        if missing:
            raise CLIError(f"--stages names {missing}, which the recipe does not define (it has {list(recipe.stages)})")
    if not names:
        raise RecipeError(f"Recipe '{recipe.path}' defines no stages.")
    apply_env(recipe)
    ctx = RunContext.from_recipe(recipe, args.output_dir)
    ctx.overrides = overrides
    # Parse and validate every stage's options first (keys, types, each config's own checks), so that a bad value in
    # the last stage fails before the first one trains.
    stages = [get_stage(n) for n in names]
    for stage in stages:
        check_section_keys(section_for(recipe, stage), stage, recipe)
    parsed = [parse_stage_configs(stage, recipe, ctx, overrides.get(stage.name, [])) for stage in stages]
    if not args.skip_memory_check:
        _check_memory_plan(recipe, ctx, names)
    from .report import write_report

    for stage, configs in zip(stages, parsed):
        print(f"[icegrt-trl] stage '{stage.name}' → {ctx.stage_dir(stage.name)}", flush=True)
        run_stage(stage, ctx, configs)
        write_report(ctx)
    print(f"[icegrt-trl] report: {ctx.output_dir / 'report.md'}", flush=True)
    return ctx.results


def build_main_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="icegrt-trl",
        description="PPO-based RLHF on current TRL: SFT → reward model → PPO → reward learning on policy → PPO.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in STAGE_COMMANDS:
        sub.add_parser(name, help=get_stage(name).help, add_help=False)
    sub.add_parser("pipeline", help=PIPELINE_HELP, add_help=False)
    sub.add_parser("plan", help=PLAN_HELP, add_help=False)
    sub.add_parser("vllm-serve", help=VLLM_SERVE_HELP, add_help=False)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_main_parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    command, rest = argv[0], argv[1:]
    if command in ("-V", "--version"):
        from . import __version__

        print(__version__)
        return 0
    if command not in COMMANDS:
        parser.print_usage(sys.stderr)
        print(f"icegrt-trl: error: unknown command {command!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        if command == "pipeline":
            run_pipeline(rest)
        elif command == "plan":
            return run_plan(rest)
        elif command == "vllm-serve":
            from .vllm_serve import main as vllm_serve

            return vllm_serve(rest)
        else:
            run_stage_command(command, rest)
    except (RecipeError, StageNotAvailable, CLIError, VLLMNotInstalled) as err:
        print(f"icegrt-trl: error: {err}", file=sys.stderr)
        return 2
    except SystemExit as exit_:  # argparse's --help and usage errors
        return exit_.code if isinstance(exit_.code, int) else 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
