"""What a user takes home from a run: Hub pushes that reload with the documented loaders alone, report curves, and the
metrics that reach a report_to tracker. One tiny pipeline (SFT → reward → PPO with LoRA → eval) runs once."""

import json
import shutil
from fnmatch import fnmatch
from pathlib import Path

import pytest
import yaml

from icegrt_trl.cli import main


class FakeHub:
    """Stands in for huggingface_hub.HfApi: a repo is a folder; upload_folder copies what the Hub would receive."""

    root: Path = None
    uploads: list = []

    def __init__(self, *args, **kwargs):
        pass

    def create_repo(self, repo_id, private=None, exist_ok=False, **kwargs):
        (self.root / repo_id).mkdir(parents=True, exist_ok=True)

        class Url(str):
            pass

        url = Url(f"https://huggingface.co/{repo_id}")
        url.repo_id = repo_id
        return url

    def upload_folder(self, repo_id, folder_path, ignore_patterns=(), **kwargs):
        FakeHub.uploads.append(repo_id)
        folder = Path(folder_path)
        for f in folder.rglob("*"):
            rel = f.relative_to(folder).as_posix()
            if f.is_file() and not any(fnmatch(rel, pat) for pat in ignore_patterns):
                dest = self.root / repo_id / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, dest)


@pytest.fixture(scope="module")
def pushed_run(tmp_path_factory):
    import huggingface_hub

    tmp = tmp_path_factory.mktemp("take_home")
    FakeHub.root, FakeHub.uploads = tmp / "hub", []
    saved = huggingface_hub.HfApi
    huggingface_hub.HfApi = FakeHub
    common = {"save_strategy": "no", "gradient_checkpointing": False, "push_to_hub": True}
    recipe = {
        "output_dir": str(tmp / "run"), "seed": 0,
        "testbed": {"num_sft": 200, "num_preferences": 64, "num_pmp": 8, "num_pref_eval": 32, "num_unlabeled": 64,
                    "num_eval": 16},
        "stages": {
            "sft": {"model_name_or_path": "testbed:llama", "learning_rate": 3e-3, "num_train_epochs": 1,
                    "per_device_train_batch_size": 32, "max_length": 64, "report_to": "none",
                    "hub_model_id": "me/tiny-sft", **common},
            "reward": {"model_name_or_path": "stage:sft", "reward_model_type": "grm", "grm_regularizer": "sft",
                       "use_peft": True, "lora_r": 8, "lora_alpha": 16, "lora_target_modules": "all-linear",
                       "learning_rate": 1e-3, "max_steps": 6,
                       "per_device_train_batch_size": 16, "max_length": 64, "report_to": "none",
                       "eval_bootstrap_samples": 50, "hub_model_id": "me/tiny-rm", **common},
            "ppo": {"model_name_or_path": "stage:sft", "use_peft": True, "lora_r": 8, "lora_alpha": 16,
                    "lora_target_modules": "all-linear", "learning_rate": 1e-3, "per_device_train_batch_size": 16,
                    "num_mini_batches": 2, "num_ppo_epochs": 1, "max_steps": 8, "response_length": 8, "stop_token": "eos",
                    "num_sample_generations": 0, "logging_steps": 2, "report_to": "tensorboard",
                    "judge_every_rollouts": 1, "judge_num_prompts": 8,
                    "hub_model_id": "me/tiny-ppo", **common},
            "eval": {"kl_num_prompts": 8, "bootstrap_samples": 50},
        }}
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    try:
        assert main(["pipeline", str(path)]) == 0
    finally:
        huggingface_hub.HfApi = saved
    run = tmp / "run"
    results = json.loads((run / "results.json").read_text())
    samples = [json.loads(line) for line in (run / "eval" / "samples.jsonl").read_text().splitlines()]
    report = (run / "report.md").read_text()
    curves = sorted(p.name for p in run.glob("report_curves_*.png"))
    log_history = json.loads((run / "ppo" / "log_history.json").read_text())
    shutil.rmtree(run)  # from here on, only what was pushed exists
    return {"hub": tmp / "hub", "results": results, "samples": samples, "report": report, "curves": curves,
            "log_history": log_history, "tb": tmp / "hub" / "me/tiny-ppo" / "runs"}


def _greedy(model, tokenizer, prompts):
    from icegrt_trl.testbed import generate_completions

    return generate_completions(model, tokenizer, prompts, max_new_tokens=16)


def test_each_stage_pushed_once_without_checkpoints(pushed_run):
    assert sorted(FakeHub.uploads) == ["me/tiny-ppo", "me/tiny-rm", "me/tiny-sft"]
    hub = pushed_run["hub"]
    for repo in ("me/tiny-sft", "me/tiny-rm", "me/tiny-ppo"):
        files = [p.relative_to(hub / repo).as_posix() for p in (hub / repo).rglob("*") if p.is_file()]
        assert not any("checkpoint" in f for f in files), files
        card = (hub / repo / "README.md").read_text()
        assert "recipe.yaml" in card and "Reload" in card, repo
    assert pushed_run["results"]["ppo"]["hub_repo"] == "me/tiny-ppo"


def test_pushed_policy_and_value_model_reload_and_work(pushed_run):
    """The PPO repo plus the SFT repo (its base) give back the trained policy: same greedy answers as in the run."""
    import torch

    from icegrt_trl.ppo.checkpoints import load_trained

    hub = pushed_run["hub"]
    policy, value_model, tokenizer = load_trained(hub / "me/tiny-ppo", base_model=str(hub / "me/tiny-sft"))
    ran = [r for r in pushed_run["samples"] if r["policy"] == "stage:ppo"]
    assert _greedy(policy, tokenizer, [r["prompt"] for r in ran]) == [r["completion"] for r in ran]
    ids = tokenizer(["sort 3 1 2 : 1 2 3"], return_tensors="pt")
    values = value_model(ids["input_ids"], ids["attention_mask"])
    assert values.shape == ids["input_ids"].shape and torch.isfinite(values).all()
    assert value_model.head.weight.abs().sum() > 0  # the trained head (it starts at zero)
    with policy.disable_adapter():  # the value adapter is its own: switching it off changes the values
        plain = value_model.head(value_model.body()(**ids).last_hidden_state).squeeze(-1)
    assert not torch.allclose(plain, values)
    card = (hub / "me/tiny-ppo" / "README.md").read_text()
    assert card.startswith("---") and "trl" in card and "Plugins" in card and "Final metrics" in card
    assert "testbed (unlabeled)" in card  # the data the policy was trained on


def test_pushed_sft_policy_reloads(pushed_run):
    from transformers import AutoModelForCausalLM

    from icegrt_trl.stages.loading import load_saved_tokenizer

    folder = str(pushed_run["hub"] / "me/tiny-sft")
    ran = [r for r in pushed_run["samples"] if r["policy"] == "stage:sft"]
    got = _greedy(AutoModelForCausalLM.from_pretrained(folder), load_saved_tokenizer(folder), [r["prompt"] for r in ran])
    assert got == [r["completion"] for r in ran]


def test_pushed_reward_model_reloads_with_its_accuracy(pushed_run):
    """The documented loader on the pushed folder reproduces the accuracy the reward stage measured in the run."""
    from icegrt_trl.reward.evaluation import evaluate_reward_model, load_reward_model
    from icegrt_trl.testbed import make_datasets

    model, tokenizer = load_reward_model(pushed_run["hub"] / "me/tiny-rm")
    data = make_datasets(num_sft=200, num_preferences=64, num_pmp=8, num_pref_eval=32, num_unlabeled=64, num_eval=16)
    got = evaluate_reward_model(model, tokenizer, {"preferences_id": data["preferences_id"]}, n_resamples=50)
    assert got["preferences_id"]["accuracy"] == pushed_run["results"]["reward"]["preferences_id/accuracy"]
    assert type(model).__name__ == "GRMRewardModel"  # with its head type, as trained


def test_report_has_training_curves_with_gold(pushed_run):
    assert pushed_run["curves"] == ["report_curves_ppo.png"]
    assert "![ppo](report_curves_ppo.png)" in pushed_run["report"]
    gold = [e for e in pushed_run["log_history"] if "gold/score" in e]
    assert gold and all(0.0 <= e["gold/score"] <= 1.0 for e in gold)
    assert "## Samples (greedy, held-out prompts)" in pushed_run["report"]


def test_report_to_tensorboard_receives_our_metric_names(pushed_run):
    """TensorBoard's event files (pushed with the PPO repo, as Trainer does) hold our metric names."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = [EventAccumulator(str(f.parent)) for f in pushed_run["tb"].rglob("events.out.tfevents.*")]
    tags = set()
    for acc in events:
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    for name in ("train/objective/scores", "train/objective/kl", "train/objective/kl_coef", "train/gold/score",
                 "train/policy/approxkl_avg", "train/loss/value_avg"):
        assert name in tags, sorted(tags)


def test_eval_figures_have_intervals_kl_and_lengths(pushed_run):
    ev = pushed_run["results"]["eval"]
    low, high = json.loads(ev["stage:ppo/gold_score_ci95"])
    assert low <= ev["stage:ppo/gold_score"] <= high
    assert ev["stage:ppo/kl_vs_reference"] != 0.0  # PPO moved away from SFT (an unmoved policy's estimate is 0)
    assert ev["stage:ppo/response_tokens"] > 0
