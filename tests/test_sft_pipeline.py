"""End to end: the pipeline's SFT stage raises the gold score above the untrained model, and eval reports it."""

import json
from pathlib import Path

from icegrt_trl.cli import main

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "tiny-offline.yaml"


def test_sft_then_eval_pipeline(tmp_path):
    out = tmp_path / "run"
    code = main(["pipeline", str(RECIPE), "--output_dir", str(out), "--stages", "sft,eval",
                 "--sft.num_train_epochs", "2", "--sft.logging_steps", "50"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    sft = results["sft"]
    assert sft["gold_score_before"] < 0.2
    assert sft["gold_score_after"] > sft["gold_score_before"] + 0.4
    assert (out / "sft" / "model.safetensors").is_file() and (out / "sft" / "tokenizer.json").is_file()
    ev = results["eval"]
    assert ev["stage:sft/gold_score"] == sft["gold_score_after"]  # same greedy completions, same judge
    assert ev["testbed:llama/win_rate_vs_stage:sft"] < 0.2
    report = (out / "report.md").read_text()
    assert "## sft" in report and "gold_score_after" in report and "## eval" in report


def test_full_default_pipeline_runs_every_stage(tmp_path):
    """The README's main job, shortened: SFT → GRM reward model → PPO against it → RLP (UML, SPG) → eval."""
    out = tmp_path / "run"
    code = main(["pipeline", str(RECIPE), "--output_dir", str(out), "--sft.num_train_epochs", "2",
                 "--reward.num_train_epochs", "1", "--ppo.max_steps", "8", "--ppo.logging_steps", "4",
                 "--rlp.num_prompts", "32", "--rlp.num_samples", "4", "--rlp.measure_num_prompts", "16"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results) == ["sft", "reward", "ppo", "rlp", "eval"]
    rlp = results["rlp"]
    # the --reward.* and --ppo.* overrides reach RLP's refit and PPO (1 epoch, 8 steps; the recipe says 3 and 200)
    assert rlp["uml/reward/train_steps"] == results["reward"]["train_steps"]
    for method in ("uml", "spg"):
        assert rlp[f"{method}/ppo/train_steps"] == 8
        assert (out / f"rlp_{method}" / "ppo" / "config.json").is_file()
        assert (out / f"rlp_{method}" / "reward" / "config.json").is_file()
        assert 0.0 <= rlp[f"rm_accuracy_on_policy_samples/after_{method}"] <= 1.0
        assert f"stage:rlp_{method}/ppo/gold_score" in results["eval"]
    assert rlp["spg/pairs_out"] == sum(1 for _ in open(out / "rlp_spg" / "pairs.jsonl"))
    assert rlp["uml/reward/train_pairs"] == results["reward"]["train_pairs"]  # UML adds no pairs
    assert rlp["spg/reward/train_pairs"] == results["reward"]["train_pairs"] + rlp["spg/pairs_out"]
    assert (out / "report_rlp.png").is_file() and "## RLP at a glance" in (out / "report.md").read_text()
    assert results["reward"]["preferences_id/accuracy"] > 0.5  # better than chance after one epoch
    assert results["ppo"]["train_steps"] == 8
    assert results["ppo"]["gold_score_before"] == results["sft"]["gold_score_after"]
    assert "stage:ppo/win_rate_vs_stage:sft" in results["eval"]
    for stage in ("sft", "reward", "ppo"):
        assert (out / stage / "config.json").is_file() or (out / stage / "adapter_config.json").is_file(), stage
    report = (out / "report.md").read_text()
    assert all(f"## {s}" in report for s in results)
