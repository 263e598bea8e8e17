"""The GPU recipes' data paths, on local files in exactly the Hub datasets' formats.

Each Qwen recipe runs with its own settings (LoRA, QLoRA's 4-bit base on bitsandbytes' CPU kernels, checkpointing,
bf16, the Qwen2 PPO settings, ptx) on a tiny Qwen2 built from a config (Llama for the 4-bit policy, see `_shrink`), with its Hub datasets replaced by local JSON
lines shaped as trl-lib/ultrafeedback_binarized (implicit-prompt conversational pairs with scores),
trl-lib/ultrafeedback-prompt (conversational prompts) and trl-lib/Capybara (messages) — and as their plain-text
equivalents. Only sizes and step counts shrink.
"""

import json
from pathlib import Path

import pytest
import yaml

from icegrt_trl.cli import main

RECIPES = ["recipes/qwen2.5-0.5b.yaml", "recipes/qwen2.5-1.5b.yaml", "recipes/qwen2.5-7b-qlora.yaml"]
QUESTIONS = [("sort 3 1 2", "1 2 3", "3 2 1"), ("reverse 4 0 7", "7 0 4", "4 0 7"), ("sort 9 5", "5 9", "9 5"),
             ("reverse 1 2 3", "3 2 1", "1 2 3")] * 4


def _write(folder: Path, split: str, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _local_datasets(root: Path, conversational: bool) -> dict[str, str]:
    prefs, prompts, sft = root / "ultrafeedback_binarized", root / "ultrafeedback-prompt", root / "Capybara"
    for split in ("train", "test"):
        if conversational:
            def turn(q, a):
                return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]

            _write(prefs, split, [{"chosen": turn(q, good), "rejected": turn(q, bad), "score_chosen": 8.0,
                                   "score_rejected": 4.0} for q, good, bad in QUESTIONS])
            _write(prompts, split, [{"prompt": [{"role": "user", "content": q}]} for q, _, _ in QUESTIONS])
        else:
            _write(prefs, split, [{"prompt": q, "chosen": " " + good, "rejected": " " + bad}
                                  for q, good, bad in QUESTIONS])
            _write(prompts, split, [{"prompt": q} for q, _, _ in QUESTIONS])
    if conversational:
        _write(sft, "train", [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
                              for q, a, _ in QUESTIONS])
    else:
        _write(sft, "train", [{"text": f"{q} : {a}"} for q, a, _ in QUESTIONS])
    return {"trl-lib/ultrafeedback_binarized": str(prefs), "trl-lib/ultrafeedback-prompt": str(prompts),
            "trl-lib/Capybara": str(sft)}


def _shrink(recipe: dict, local: dict[str, str], out: Path) -> dict:
    """The recipe's settings, with local data, a tiny Qwen2 and a few steps. A 4-bit policy is a Qwen2 too: its
    q/k/v projections have a bias, and the trainer keeps bitsandbytes from repacking them for CPU inference during
    the rollouts (a repacked layer with a bias failed in the training forward, and one without gave no gradient)."""
    recipe["output_dir"] = str(out)
    for name, section in recipe["stages"].items():
        for key in ("dataset_name", "ptx_dataset_name"):
            if key in section:
                section[key] = local[section[key]]
        if "model_name_or_path" in section:
            section["model_name_or_path"] = "testbed:qwen2"
        if name == "reward":
            section.update(max_steps=2, per_device_train_batch_size=4, gradient_accumulation_steps=1, max_length=48,
                           save_strategy="no", report_to="none", eval_bootstrap_samples=20)
        if name == "ppo":
            section.pop("total_episodes", None)
            section.update(max_steps=4, per_device_train_batch_size=4, gradient_accumulation_steps=1,
                           num_mini_batches=2, response_length=6, value_warmup_steps=1, num_sample_generations=0,
                           save_strategy="no", report_to="none")
    return recipe


@pytest.mark.parametrize("recipe_path, conversational", [(r, True) for r in RECIPES] + [(RECIPES[0], False)])
def test_recipe_runs_on_local_files_in_the_hub_formats(tmp_path, recipe_path, conversational):
    recipe = yaml.safe_load(Path(recipe_path).read_text())
    settings = dict(recipe["stages"]["ppo"])
    local = _local_datasets(tmp_path / "data", conversational)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(_shrink(recipe, local, tmp_path / "run"), sort_keys=False))
    assert main(["pipeline", str(path)]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["reward"]["train_pairs"] == len(QUESTIONS) and results["reward"]["test/n"] == len(QUESTIONS)
    assert results["ppo"]["train_steps"] == 4 and results["ppo"]["prompts"] == len(QUESTIONS)
    history = json.loads((tmp_path / "run" / "ppo" / "log_history.json").read_text())
    ptx = [e["loss/ptx_avg"] for e in history if "loss/ptx_avg" in e]
    assert ptx and all(v > 0 for v in ptx)  # the ptx loss ran on the Capybara-shaped data
    assert results["eval"]["stage:reward/test/n"] == len(QUESTIONS)
    adapter = json.loads((tmp_path / "run" / "ppo" / "adapter_config.json").read_text())
    assert adapter["r"] == settings["lora_r"]  # the policy trained as a LoRA adapter, with the recipe's rank
