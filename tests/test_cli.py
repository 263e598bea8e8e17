import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from icegrt_trl.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "tiny-offline.yaml"


@pytest.mark.parametrize("command", COMMANDS)
def test_help_for_every_subcommand(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"icegrt-trl {command}" in out


def test_top_level_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert command in out


def test_console_script_installed():
    out = subprocess.run([Path(sys.executable).parent / "icegrt-trl", "sft", "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "--learning_rate" in out and "--model_name_or_path" in out


def _recipe(tmp_path, data) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_missing_recipe_file(capsys):
    assert main(["sft", "no/such/recipe.yaml"]) == 2
    err = capsys.readouterr().err
    assert "Recipe file 'no/such/recipe.yaml' not found" in err


def test_unknown_stage_key_suggests_fix(tmp_path, capsys):
    path = _recipe(tmp_path, {"stages": {"sft": {"learnin_rate": 1e-3}}})
    assert main(["pipeline", path, "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "stage 'sft': unknown key 'learnin_rate'" in err and "Did you mean 'learning_rate'?" in err
    assert not (tmp_path / "out" / "sft").exists()  # nothing trained


def test_typo_in_last_stage_fails_before_first_stage_trains(tmp_path, capsys):
    path = _recipe(tmp_path, {"stages": {"sft": {"model_name_or_path": "testbed:llama"},
                                         "eval": {"mdoe": "policy"}}})
    assert main(["pipeline", path, "--output_dir", str(tmp_path / "out")]) == 2
    assert "unknown key 'mdoe'" in capsys.readouterr().err
    assert not (tmp_path / "out" / "sft").exists()


def test_unknown_top_level_key(tmp_path, capsys):
    path = _recipe(tmp_path, {"stagess": {}})
    assert main(["pipeline", path]) == 2
    assert "unknown top-level key(s) ['stagess']" in capsys.readouterr().err


def test_bad_value_type(tmp_path, capsys):
    path = _recipe(tmp_path, {"stages": {"sft": {"learning_rate": "fast"}}})
    assert main(["sft", path, "--output_dir", str(tmp_path / "out")]) == 2
    assert "Option 'learning_rate': cannot read 'fast'" in capsys.readouterr().err


def test_stage_output_dir_is_reserved(tmp_path, capsys):
    path = _recipe(tmp_path, {"stages": {"sft": {"output_dir": "elsewhere"}}})
    assert main(["sft", path, "--output_dir", str(tmp_path / "out")]) == 2
    assert "set the run's output_dir at the recipe's top level" in capsys.readouterr().err


def test_reference_to_a_stage_that_did_not_run(tmp_path, capsys):
    path = _recipe(tmp_path, {"stages": {"eval": {"policies": ["stage:ppo"]}}})
    assert main(["eval", path, "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "'stage:ppo' refers to the output of stage 'ppo'" in err and "Run the 'ppo' stage first" in err


def test_commands_come_from_the_stage_registry(capsys):
    from icegrt_trl.stages import STAGE_REGISTRY, get_stage

    assert COMMANDS == (*STAGE_REGISTRY, "pipeline", "plan", "vllm-serve")
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in STAGE_REGISTRY:
        assert get_stage(name).help[:40] in " ".join(out.split())  # each command's help is its stage's


def test_recipe_naming_a_stage_that_does_not_exist(tmp_path, capsys):
    path = _recipe(tmp_path, {"stages": {"sft": {}, "rlhf": {}}})
    assert main(["pipeline", path, "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "Unknown stage 'rlhf'" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "sft").exists()


def test_invalid_value_in_a_later_stage_exits_2_before_anything_trains(tmp_path, capsys):
    """A config's own validation (here PPOConfig's) runs for every stage before the first one trains."""
    path = _recipe(tmp_path, {"stages": {"sft": {"model_name_or_path": "testbed:llama"},
                                         "ppo": {"num_mini_batches": 3, "per_device_train_batch_size": 4}}})
    assert main(["pipeline", path, "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "stage 'ppo': Invalid PPOConfig: num_mini_batches=3 must divide per_device_train_batch_size=4" in err
    assert "Traceback" not in err and err.count("icegrt-trl: error:") == 1
    assert not (tmp_path / "out" / "sft").exists()
    # the same value from the command line of a single stage
    assert main(["ppo", path, "--output_dir", str(tmp_path / "out2"), "--num_mini_batches", "3"]) == 2
    assert "stage 'ppo': Invalid PPOConfig" in capsys.readouterr().err


def test_unknown_command(capsys):
    assert main(["train"]) == 2
    assert "unknown command 'train'" in capsys.readouterr().err


def test_local_dataset_files_are_read_once_and_split_names_checked(tmp_path):
    from icegrt_trl.recipe import RecipeError, recipe_from_dict
    from icegrt_trl.stages.base import DataArguments, RunContext

    data_dir = tmp_path / "prefs"
    data_dir.mkdir()
    (data_dir / "train.jsonl").write_text('{"prompt": "sort 2 1 :", "chosen": " 1 2", "rejected": " 2 1"}\n')
    ctx = RunContext.from_recipe(recipe_from_dict({"stages": {}}), str(tmp_path / "out"))
    args = DataArguments(dataset_name=str(data_dir))
    first = ctx.dataset(args, "train")
    assert first[0]["chosen"] == " 1 2" and ctx.dataset(args, "train") is first
    with pytest.raises(RecipeError, match=r"has no split 'test'. Available splits: \['train'\]"):
        ctx.dataset(args, "test")


def test_every_option_of_ours_has_help_a_user_can_act_on():
    """Fields icegrt-trl adds (PPOConfig, RewardConfig, the stages' dataclasses) carry prose help, not a label."""
    import dataclasses

    import trl
    from transformers import TrainingArguments

    from icegrt_trl.stages import STAGE_REGISTRY, get_stage

    inherited = {f.name for f in dataclasses.fields(TrainingArguments)} | \
        {f.name for f in dataclasses.fields(trl.RewardConfig)} | {f.name for f in dataclasses.fields(trl.SFTConfig)}
    short = []
    for name in STAGE_REGISTRY:
        for cls in get_stage(name).config_classes:
            if cls.__module__.startswith("trl") or cls.__module__.startswith("transformers"):
                continue  # TRL's and transformers' own configs keep their help
            for f in dataclasses.fields(cls):
                if f.name not in inherited or f.name == "learning_rate" and cls.__name__ == "PPOConfig":
                    if len(f.metadata.get("help", "")) < 30:
                        short.append(f"{cls.__name__}.{f.name}")
    assert short == []


@pytest.mark.parametrize("stages, testbed, message", [
    ({"sft": {}}, {}, "model_name_or_path is required, e.g. 'testbed:llama'"),
    ({"sft": {"model_name_or_path": "testbed:llama"}}, {"label_noise": 0.7}, "Recipe section 'testbed': .*label_noise"),
    ({"ppo": {"num_samples_per_prompt": 0}}, {}, "num_samples_per_prompt must be >= 1"),
])
def test_more_bad_recipes_exit_2_with_one_line(tmp_path, capsys, stages, testbed, message):
    import re

    path = _recipe(tmp_path, {"stages": stages, "testbed": testbed})
    assert main(["pipeline", path, "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err, err


@pytest.mark.parametrize("conversational", [False, True])
def test_reward_stage_from_flags_alone_on_local_files_in_trl_formats(tmp_path, conversational):
    """As `trl reward --model_name_or_path ... --dataset_name ...`: no recipe, a local dataset folder whose splits
    have TRL's names (train, test), in TRL's preference format (plain or conversational)."""
    import json

    data = tmp_path / "prefs"
    data.mkdir()

    def row(i):
        prompt, good, bad = f"sort {i % 10} 1 :", f"1 {i % 10}", f"{i % 10} 1"
        if conversational:
            return {"prompt": [{"role": "user", "content": prompt}],
                    "chosen": [{"role": "assistant", "content": good}],
                    "rejected": [{"role": "assistant", "content": bad}]}
        return {"prompt": prompt, "chosen": " " + good, "rejected": " " + bad}

    (data / "train.jsonl").write_text("".join(json.dumps(row(i)) + "\n" for i in range(24)))
    (data / "test.jsonl").write_text("".join(json.dumps(row(i)) + "\n" for i in range(8)))
    out = tmp_path / "out"
    code = main(["reward", "--output_dir", str(out), "--model_name_or_path", "testbed:llama:32x1",
                 "--dataset_name", str(data), "--max_steps", "2", "--per_device_train_batch_size", "8",
                 "--report_to", "none", "--save_strategy", "no", "--gradient_checkpointing", "false",
                 "--eval_bootstrap_samples", "50", "--max_length", "32"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())["reward"]
    assert results["train_pairs"] == 24 and results["test/n"] == 8  # TRL's split names, found by default
    assert (out / "reward" / "config.json").is_file()
