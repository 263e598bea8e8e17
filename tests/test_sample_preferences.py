"""sample_preferences: pairs from a model's own samples ranked by the gold reward, read by the reward stage."""

import json
import random

import pytest
import yaml

from icegrt_trl.cli import main
from icegrt_trl.stages.preferences import flip_labels, pairs_from_samples


def test_one_pair_per_prompt_with_different_scores():
    rows = pairs_from_samples(["p1", "p2", "p3"], [["a", "b", "c"], ["x", "y"], ["u", "v"]],
                              [[0.2, 0.9, 0.2], [0.5, 0.5], [0.0, 1.0]], random.Random(0))
    assert [r["prompt"] for r in rows] == ["p1", "p3"]  # p2's samples all score the same: no pair
    assert rows[0]["chosen"] == "b" and rows[0]["rejected"] in ("a", "c")
    assert (rows[1]["chosen"], rows[1]["rejected"], rows[1]["score_chosen"]) == ("v", "u", 1.0)


def test_an_empty_sample_is_never_paired():
    rows = pairs_from_samples(["p1", "p2", "p3"], [["", "b", "c"], [" ", "y"], [[{"role": "assistant", "content": ""}],
                                                                              [{"role": "assistant", "content": "v"}]]],
                              [[0.0, 0.9, 0.2], [0.0, 1.0], [0.0, 1.0]], random.Random(0))
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in rows] == [("p1", "b", "c")]  # p2, p3: one answer only


def test_flip_labels_swaps_answers_and_scores():
    rows = [{"chosen": "good", "rejected": "bad", "score_chosen": 1.0, "score_rejected": 0.0} for _ in range(1000)]
    flipped = flip_labels(rows, 0.2, random.Random(0))
    swapped = [r for r in rows if r["chosen"] == "bad"]
    assert len(swapped) == flipped and 150 < flipped < 250
    assert all(r["score_chosen"] == 0.0 for r in swapped)
    assert flip_labels(rows, 0.0, random.Random(0)) == 0


def _recipe(tmp_path, **options):
    prefs = {"model_name_or_path": "testbed:llama", "num_prompts": 24, "num_samples": 4, "max_new_tokens": 8,
             "label_noise": 0.25, "test_size": 0.25, **options}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({
        "output_dir": str(tmp_path / "run"), "seed": 0,
        "testbed": {"num_sft": 8, "num_preferences": 8, "num_pmp": 8, "num_pref_eval": 8, "num_unlabeled": 32,
                    "num_eval": 8},
        "stages": {
            "sample_preferences": prefs,
            "reward": {"model_name_or_path": "testbed:llama", "dataset_name": "stage:sample_preferences",
                       "max_steps": 2, "per_device_train_batch_size": 4, "max_length": 32, "save_strategy": "no",
                       "report_to": "none", "gradient_checkpointing": False, "eval_bootstrap_samples": 50},
        }}, sort_keys=False))
    return path


def test_stage_writes_pairs_that_the_reward_stage_reads(tmp_path):
    assert main(["pipeline", str(_recipe(tmp_path))]) == 0
    out = tmp_path / "run"
    results = json.loads((out / "results.json").read_text())
    prefs = results["sample_preferences"]
    train = [json.loads(line) for line in (out / "sample_preferences" / "train.jsonl").read_text().splitlines()]
    test = [json.loads(line) for line in (out / "sample_preferences" / "test.jsonl").read_text().splitlines()]
    assert prefs["pairs"] == len(train) + len(test) and prefs["test_pairs"] == len(test) > 0
    from icegrt_trl.testbed import gold_reward

    # the labels are the gold reward's (re-scored here), clean on test, flipped on a share of train
    for split in (train, test):
        prompts = [r["prompt"] for r in split]
        chosen, rejected = gold_reward(prompts, [r["chosen"] for r in split]), \
            gold_reward(prompts, [r["rejected"] for r in split])
        assert chosen == [r["score_chosen"] for r in split]
        assert rejected == [r["score_rejected"] for r in split]
    assert all(r["score_chosen"] > r["score_rejected"] for r in test)
    flipped = sum(r["score_chosen"] < r["score_rejected"] for r in train)
    assert flipped / len(train) == pytest.approx(prefs["label_noise_realized"], abs=1e-3)
    # the reward stage trained on train.jsonl and evaluated on test.jsonl
    assert results["reward"]["train_pairs"] == len(train)
    assert results["reward"]["test/n"] == len(test)


@pytest.mark.parametrize("options, message", [
    ({"num_samples": 1}, "a pair needs two samples of a prompt"),
    ({"label_noise": 0.7}, r"label_noise=0.7 must lie in \[0, 0.5\]"),
    ({"test_size": 1.0}, r"test_size=1.0 must lie in \[0, 1\)"),
    ({"dataset_name": "some/hub-dataset"}, "sample_preferences labels pairs with the testbed's gold reward"),
])
def test_bad_options_fail_before_sampling(tmp_path, capsys, options, message):
    import re

    assert main(["pipeline", str(_recipe(tmp_path, **options))]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err, err
    assert not (tmp_path / "run" / "sample_preferences" / "train.jsonl").exists()


def test_reading_pairs_of_a_stage_that_has_not_run(tmp_path, capsys):
    assert main(["pipeline", str(_recipe(tmp_path)), "--stages", "reward"]) == 2
    err = capsys.readouterr().err
    assert "holds no .jsonl split. Run that stage first" in err, err
