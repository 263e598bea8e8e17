"""The reward and reward_pmp stages through the CLI, and reward-mode evaluation of their outputs."""

import json

import pytest
import torch
import yaml

from icegrt_trl.cli import main
from icegrt_trl.reward.evaluation import load_reward_model
from icegrt_trl.testbed import make_datasets

TESTBED = {"seed": 0, "num_sft": 8, "num_preferences": 48, "num_pmp": 64, "num_pref_eval": 24, "num_unlabeled": 4,
           "num_eval": 4}
FAST = {"per_device_train_batch_size": 16, "max_steps": 2, "logging_steps": 1, "save_strategy": "no",
        "report_to": "none", "gradient_checkpointing": False, "disable_tqdm": True, "max_length": 48,
        "eval_bootstrap_samples": 100}


def _recipe(tmp_path, stages):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "run"), "seed": 0, "testbed": TESTBED,
                                    "stages": stages}))
    return str(path)


def test_reward_stage_grm_with_lora_then_eval(tmp_path):
    stages = {"reward": {"model_name_or_path": "testbed:llama:32x2", "grm_regularizer": "sft", "head_type": "linear",
                         "use_peft": True, "lora_r": 4, "lora_alpha": 8,
                         "lora_target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"], **FAST},
              "eval": {"mode": "reward", "bootstrap_samples": 100}}
    recipe = _recipe(tmp_path, stages)
    assert main(["reward", recipe]) == 0
    out = tmp_path / "run" / "reward"
    results = json.loads((tmp_path / "run" / "results.json").read_text())["reward"]
    model, tok = load_reward_model(out, head_type="linear")  # merged: no adapter left
    data = make_datasets(**TESTBED)
    for split in ("preferences_id", "preferences_ood"):
        # the reported accuracy, recomputed pair by pair with plain unbatched forwards of the saved model on what
        # TRL trains reward models on: prompt + completion + EOS
        wins = 0
        with torch.no_grad():
            for row in data[split]:
                r = [model(**tok(row["prompt"] + row[side] + tok.eos_token, return_tensors="pt")).logits.item()
                     for side in ("chosen", "rejected")]
                wins += r[0] > r[1]
        acc = results[f"{split}/accuracy"]
        assert acc == pytest.approx(wins / len(data[split]), abs=5e-5)  # results.json rounds to 4 digits
        assert results[f"{split}/ci_low"] < acc < results[f"{split}/ci_high"]
    assert results["train_steps"] == 2
    card = (out / "README.md").read_text()
    assert "head type: **linear**" in card and "| preferences_ood | 24 |" in card and "grm(regularizer=sft" in card
    assert type(model).__name__ == "GRMRewardModel" and not (out / "adapter_config.json").exists()
    assert main(["eval", recipe]) == 0
    ev = json.loads((tmp_path / "run" / "results.json").read_text())["eval"]
    assert ev["stage:reward/preferences_id/accuracy"] == results["preferences_id/accuracy"]


def test_reward_pmp_stage_reports_both_models(tmp_path):
    stages = {"reward_pmp": {"model_name_or_path": "testbed:qwen2:32x2", "reward_model_type": "grm",
                             "head_type": "mlp", "pmp_num_train_epochs": 1, **FAST}}
    assert main(["reward_pmp", _recipe(tmp_path, stages)]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())["reward_pmp"]
    for model in ("pmp", "rm"):
        for split in ("preferences_id", "preferences_ood"):
            assert f"{model}/{split}/accuracy" in results
    assert results["pmp_pairs"] == 64 and results["rm_pairs"] == 48
    assert (tmp_path / "run" / "reward_pmp" / "pmp" / "config.json").is_file()
    report = (tmp_path / "run" / "report.md").read_text()
    assert "pmp/preferences_ood/accuracy" in report and "rm/preferences_ood/accuracy" in report
