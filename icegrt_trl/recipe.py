"""YAML recipes: which stages run, with which configs, on which data.

A recipe is a mapping::

    output_dir: runs/tiny-offline      # each stage writes <output_dir>/<stage>/, the pipeline a report.md
    seed: 0                            # default `seed` of every stage
    testbed: {num_sft: 2000}           # TestbedConfig fields, for stages whose dataset_name is "testbed"
    stages:                            # run in this order by `icegrt-trl pipeline`
      sft: {model_name_or_path: "testbed:llama", learning_rate: 3.0e-3}
      eval: {}

Each stage section holds the fields of that stage's dataclasses (e.g. trl's `ModelConfig` and `SFTConfig`
for `sft`); the command line overrides them (`icegrt-trl sft recipe.yaml --learning_rate 1e-3`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

TOP_LEVEL_KEYS = {"output_dir", "seed", "testbed", "stages", "env", "description"}


class RecipeError(ValueError):
    """A recipe that cannot work: missing file, unknown key, wrong type. Raised before any training."""


@dataclass
class Recipe:
    path: Path | None
    output_dir: str = "runs/default"
    seed: int | None = None
    testbed: dict[str, Any] = field(default_factory=dict)
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    description: str = ""

    @property
    def name(self) -> str:
        return self.path.stem if self.path else "inline"


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(
            f"Recipe file '{path}' not found. Pass the path of a YAML recipe, e.g. recipes/tiny-offline.yaml."
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise RecipeError(f"Recipe '{path}' is not valid YAML: {err}") from None
    return recipe_from_dict(data, path)


def recipe_from_dict(data: Any, path: Path | None = None) -> Recipe:
    where = f"Recipe '{path}'" if path else "Recipe"
    if not isinstance(data, dict):
        raise RecipeError(f"{where} must be a YAML mapping with a 'stages' section.")
    unknown = set(data) - TOP_LEVEL_KEYS
    if unknown:
        raise RecipeError(
            f"{where}: unknown top-level key(s) {sorted(unknown)}. Allowed: {sorted(TOP_LEVEL_KEYS)}; "
            "stage options go under 'stages: <stage>:'."
        )
    stages = data.get("stages") or {}
    if not isinstance(stages, dict):
        raise RecipeError(f"{where}: 'stages' must map stage names to their options.")
    for name, section in stages.items():
        if section is not None and not isinstance(section, dict):
            raise RecipeError(f"{where}: stage '{name}' must be a mapping of options, got {type(section).__name__}.")
    testbed = data.get("testbed") or {}
    if not isinstance(testbed, dict):
        raise RecipeError(f"{where}: 'testbed' must be a mapping of TestbedConfig fields.")
    return Recipe(
        path=path,
        output_dir=str(data.get("output_dir", "runs/default")),
        seed=data.get("seed"),
        testbed=testbed,
        stages={name: dict(section or {}) for name, section in stages.items()},
        env={k: str(v) for k, v in (data.get("env") or {}).items()},
        description=str(data.get("description", "")),
    )
