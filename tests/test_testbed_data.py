import pytest

from icegrt_trl.testbed import TestbedConfig, gold_reward, label_agreement, make_datasets, parse_prompt

SCHEMAS = {
    "sft": ["prompt", "completion"],
    "preferences": ["prompt", "chosen", "rejected"],
    "preferences_pmp": ["prompt", "chosen", "rejected"],
    "preferences_id": ["prompt", "chosen", "rejected"],
    "preferences_ood": ["prompt", "chosen", "rejected"],
    "unlabeled": ["prompt"],
    "eval": ["prompt"],
}


@pytest.fixture(scope="module")
def data():
    return make_datasets(num_sft=400, num_preferences=2000, num_pmp=2000, num_pref_eval=200, num_unlabeled=100)


def test_schemas(data):
    assert set(data) == set(SCHEMAS)
    for split, columns in SCHEMAS.items():
        assert data[split].column_names == columns, split
        assert len(data[split]) > 0


def test_eval_prompts_are_held_out(data):
    held_out = set(data["eval"]["prompt"])
    for split in SCHEMAS:
        if split != "eval":
            assert not held_out & set(data[split]["prompt"]), split


def test_deterministic():
    a, b = make_datasets(seed=5, num_sft=50), make_datasets(seed=5, num_sft=50)
    assert a["sft"]["completion"] == b["sft"]["completion"]
    assert make_datasets(seed=6, num_sft=50)["sft"]["prompt"] != a["sft"]["prompt"]


def test_ood_split_has_longer_inputs(data):
    lengths = [len(parse_prompt(p).digits) for p in data["preferences_ood"]["prompt"]]
    assert min(lengths) >= 7
    assert max(len(parse_prompt(p).digits) for p in data["preferences_id"]["prompt"]) <= 6


@pytest.mark.parametrize("noise", [0.0, 0.2, 0.4])
def test_label_noise_rate(noise):
    pairs = make_datasets(num_preferences=3000, label_noise=noise, num_sft=1, num_pmp=1)["preferences"]
    # 3000 Bernoulli draws: 3 standard deviations is under 0.03.
    assert abs((1 - label_agreement(pairs)) - noise) < 0.03


def test_clean_eval_splits(data):
    assert label_agreement(data["preferences_id"]) == 1.0
    assert label_agreement(data["preferences_ood"]) == 1.0


def test_demonstrations_are_imperfect(data):
    scores = gold_reward(data["sft"]["prompt"], data["sft"]["completion"])
    perfect = sum(s == 1.0 for s in scores) / len(scores)
    # 30 % random mistakes everywhere, and 70 % of `reverse` demos (half the tasks) say "the answer is":
    # 0.7 · (0.5 + 0.5 · 0.3) ≈ 0.455 are perfect.
    assert 0.38 < perfect < 0.53
    reverse = [c for p, c in zip(data["sft"]["prompt"], data["sft"]["completion"]) if p.startswith("reverse")]
    verbose = sum(c.startswith(" the answer is") for c in reverse) / len(reverse)
    assert abs(verbose - 0.7) < 0.08
    assert not any(c.startswith(" the answer") for p, c in zip(data["sft"]["prompt"], data["sft"]["completion"])
                   if p.startswith("sort"))


def test_conversational_format():
    data = make_datasets(conversational=True, num_sft=10, num_preferences=10)
    row = data["preferences"][0]
    assert row["prompt"][0]["role"] == "user" and row["chosen"][0]["role"] == "assistant"
    text = make_datasets(conversational=False, num_sft=10, num_preferences=10)["preferences"][0]
    assert row["chosen"][0]["content"] == text["chosen"].strip()  # the same pair, as a message
    assert gold_reward([row["prompt"]], [row["chosen"]]) == gold_reward([text["prompt"]], [text["chosen"]])


@pytest.mark.parametrize("kwargs,msg", [
    ({"label_noise": 0.7}, "label_noise"),
    ({"min_len": 5, "max_len": 3}, "min_len"),
    ({"tasks": ("sort", "juggle")}, "juggle"),
    ({"demo_verbose_rate": 1.5}, "demo_verbose_rate"),
])
def test_bad_config(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        TestbedConfig(**kwargs)
