"""The stage contract shared by the CLI and the pipeline.

A stage is a class with a `name`, the dataclasses its recipe section fills (`config_classes`), and
`run(ctx, *configs) -> dict` returning the figures that go into the run's report. Stages find their inputs
through the `RunContext`: the testbed datasets, the outputs of earlier stages (`stage:sft` as a model path),
and where to write (`ctx.stage_dir(name)`).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..recipe import Recipe, RecipeError

logger = logging.getLogger(__name__)

STAGE_PREFIX = "stage:"
LOAD_DTYPES = ("auto", "float32", "bfloat16", "float16")  # what a stage's dtype option may name
TESTBED_PREFIX = "testbed:"


def _docstring_args(cls) -> dict[str, str]:
    """``name: text`` entries of the ``Args:`` sections of `cls` and its bases (the nearest class wins)."""
    import inspect
    import re

    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        doc = inspect.cleandoc(klass.__dict__.get("__doc__") or "")
        if "Args:" not in doc:
            continue
        current = None
        for line in doc.split("Args:", 1)[1].splitlines():
            m = re.match(r"^    (\w+)(?: \(.*?\))?: (.*)$", line)
            if m:
                current = m.group(1)
                out[current] = m.group(2).strip()
            elif current and line.startswith("        "):
                out[current] += " " + line.strip()
            elif line.strip():
                current = None
    return out


def documented(cls):
    """Give every field of the dataclass `cls` without a ``help`` the text of its docstring's ``Args:`` entry, so
    ``icegrt-trl <stage> --help`` shows what the docstring says (one source for both)."""
    import types

    texts = _docstring_args(cls)
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata and f.name in texts:
            text = texts[f.name].replace("``", "").replace("`", "").replace("%", "%%")  # plain text for argparse
            f.metadata = types.MappingProxyType({**f.metadata, "help": text})
    return cls


@documented
@dataclass
class DataArguments:
    """Where a stage's data comes from.

    Args:
        dataset_name: ``"testbed"`` for the offline testbed (configured by the recipe's ``testbed:`` section),
            ``stage:<name>`` for the JSON-lines splits an earlier stage wrote (``stage:sample_preferences``), or
            a dataset for `datasets.load_dataset` (a Hub id or a local path / data files folder).
        dataset_config: the dataset's configuration name, if any.
        dataset_train_split: split used for training. Default: train for other datasets (as TRL's scripts), the
            stage's testbed split on the testbed (sft, preferences, unlabeled, ...).
        dataset_eval_splits: splits used for evaluation. Default: test for other datasets when they have one (as
            TRL's scripts), the stage's testbed splits on the testbed.
    """

    # the testbed's splits for this stage, used when the fields above are not set
    testbed_train_split: ClassVar[str | None] = None
    testbed_eval_splits: ClassVar[tuple[str, ...]] = ()

    dataset_name: str = "testbed"
    dataset_config: str | None = None
    dataset_train_split: str | None = None
    dataset_eval_splits: list[str] = field(default_factory=list)

    @property
    def on_testbed(self) -> bool:
        return self.dataset_name == "testbed"

    def train_split(self) -> str:
        """The training split: as set, else the testbed's for this stage, else TRL's ``train``."""
        if self.dataset_train_split:
            return self.dataset_train_split
        return (self.testbed_train_split or "train") if self.on_testbed else "train"

    def eval_splits(self, ctx: "RunContext") -> list[str]:
        """The evaluation splits: as set, else the testbed's for this stage, else TRL's ``test`` when it exists."""
        if self.dataset_eval_splits:
            return list(self.dataset_eval_splits)
        if self.on_testbed:
            return list(self.testbed_eval_splits)
        return ["test"] if "test" in ctx.split_names(self) else []


class StageNotAvailable(RuntimeError):
    """A stage name that is not in the stage registry."""


class Stage:
    """Base class: subclasses set `name`, `help`, `config_classes` and implement `run`."""

    name: ClassVar[str]
    help: ClassVar[str]
    config_classes: ClassVar[tuple[type, ...]]

    def run(self, ctx: "RunContext", *configs) -> dict[str, Any]:
        raise NotImplementedError


@dataclass
class RunContext:
    """Shared state of one CLI invocation: the recipe, the output root, and results gathered so far."""

    recipe: Recipe
    output_dir: Path
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    _testbed: Any = None
    _loaded: dict[tuple, Any] = field(default_factory=dict)  # datasets by (name, config), read once per run
    # command-line overrides per stage (`--ppo.max_steps 8`), for stages that re-run another stage's section (RLP)
    overrides: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def from_recipe(cls, recipe: Recipe, output_dir: str | None = None) -> "RunContext":
        root = Path(output_dir or recipe.output_dir)
        root.mkdir(parents=True, exist_ok=True)
        ctx = cls(recipe=recipe, output_dir=root)
        ctx.results = ctx._read_results()
        return ctx

    # --- paths and earlier stages ------------------------------------------------------------------
    def stage_dir(self, name: str) -> Path:
        return self.output_dir / name

    def resolve_path(self, spec: str) -> str:
        """``stage:sft`` → the folder the sft stage saved its model to; anything else unchanged."""
        if spec and spec.startswith(STAGE_PREFIX):
            stage = spec[len(STAGE_PREFIX):]
            path = self.stage_dir(stage)
            if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
                raise RecipeError(
                    f"'{spec}' refers to the output of stage '{stage}', but {path} holds no saved model. "
                    f"Run the '{stage}' stage first (icegrt-trl {stage} ... or the pipeline)."
                )
            return str(path)
        return spec

    # --- data --------------------------------------------------------------------------------------
    def testbed_config(self):
        """The recipe's ``testbed:`` section as a `TestbedConfig`."""
        from ..testbed import TestbedConfig

        fields = {f.name for f in dataclasses.fields(TestbedConfig)}
        unknown = set(self.recipe.testbed) - fields
        if unknown:
            raise RecipeError(
                f"Recipe section 'testbed': unknown key(s) {sorted(unknown)}. TestbedConfig fields: {sorted(fields)}."
            )
        try:
            return TestbedConfig(**self.recipe.testbed)
        except (ValueError, TypeError) as err:
            raise RecipeError(f"Recipe section 'testbed': {err}") from None

    def testbed(self):
        if self._testbed is None:
            from ..testbed import make_datasets

            self._testbed = make_datasets(self.testbed_config())
        return self._testbed

    def _splits(self, data: DataArguments):
        if data.dataset_name == "testbed":
            return self.testbed()
        if data.dataset_name.startswith(STAGE_PREFIX):  # JSON-lines splits an earlier stage wrote (sample_preferences)
            return self._stage_dataset(data.dataset_name)
        key = (data.dataset_name, data.dataset_config)
        if key not in self._loaded:
            from datasets import load_dataset

            self._loaded[key] = load_dataset(data.dataset_name, data.dataset_config)
        return self._loaded[key]

    def _stage_dataset(self, spec: str):
        if spec not in self._loaded:
            from datasets import load_dataset

            folder = self.stage_dir(spec[len(STAGE_PREFIX):])
            files = {f.stem: str(f) for f in sorted(folder.glob("*.jsonl")) if f.stat().st_size}
            if not files:
                raise RecipeError(f"dataset_name '{spec}': {folder} holds no .jsonl split. Run that stage first "
                                  f"(icegrt-trl {spec[len(STAGE_PREFIX):]} ... or the pipeline).")
            self._loaded[spec] = load_dataset("json", data_files=files)
        return self._loaded[spec]

    def split_names(self, data: DataArguments) -> list[str]:
        return sorted(self._splits(data))

    def dataset(self, data: DataArguments, split: str):
        """One split of the stage's dataset (the testbed or anything `datasets.load_dataset` reads)."""
        splits = self._splits(data)
        if split not in splits:
            raise RecipeError(
                f"Dataset '{data.dataset_name}' has no split '{split}'. Available splits: {sorted(splits)}."
            )
        return splits[split]

    # --- results and report ------------------------------------------------------------------------
    def _results_file(self) -> Path:
        return self.output_dir / "results.json"

    def _read_results(self) -> dict:
        f = self._results_file()
        return json.loads(f.read_text()) if f.is_file() else {}

    def record(self, stage: str, figures: dict[str, Any]) -> None:
        self.results[stage] = figures
        self._results_file().write_text(json.dumps(self.results, indent=2, default=str))


def run_stage(stage: Stage, ctx: RunContext, configs: tuple) -> dict[str, Any]:
    start = time.time()
    figures = stage.run(ctx, *configs) or {}
    figures["runtime_s"] = round(time.time() - start, 1)
    ctx.record(stage.name, figures)
    return figures


def section_for(recipe: Recipe, stage: Stage) -> dict[str, Any]:
    """The recipe's options for `stage`, with the recipe-wide defaults (seed, output_dir) filled in."""
    section = dict(recipe.stages.get(stage.name, {}))
    field_names = {f.name for cls in stage.config_classes for f in dataclasses.fields(cls)}
    if recipe.seed is not None and "seed" in field_names:
        section.setdefault("seed", recipe.seed)
    # TRL's configs default to bf16, which CPU-only machines cannot train in: fall back to fp32 there
    # unless the recipe asks otherwise.
    if "bf16" in field_names and "bf16" not in section and not _has_accelerator():
        section["bf16"] = False
    # bf16 asked for on a machine without an accelerator: transformers refuses it unless use_cpu is set, although
    # CPUs with AVX-512 BF16 train ~2-4x faster in it. Asking for bf16 there means asking for it on the CPU.
    if section.get("bf16") and "use_cpu" in field_names and "use_cpu" not in section and not _has_accelerator():
        section["use_cpu"] = True
    return section


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


def check_section_keys(section: dict[str, Any], stage: Stage, recipe: Recipe) -> None:
    known = {f.name for cls in stage.config_classes for f in dataclasses.fields(cls)}
    for key in section:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            classes = ", ".join(c.__name__ for c in stage.config_classes)
            raise RecipeError(
                f"Recipe '{recipe.path}', stage '{stage.name}': unknown key '{key}'.{hint} "
                f"Keys of this stage come from {classes} (see `icegrt-trl {stage.name} --help`)."
            )


def apply_env(recipe: Recipe) -> None:
    for key, value in recipe.env.items():
        os.environ.setdefault(key, value)
