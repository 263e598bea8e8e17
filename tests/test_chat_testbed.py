"""The chat suite of the testbed: prompts, the gold reward (hand-scored examples), splits, and the answer extractor."""

import pytest

from icegrt_trl.testbed import TestbedConfig, gold_reward, make_datasets
from icegrt_trl.testbed.chat_tasks import (
    ChatProblem,
    extract_chat_answer,
    is_concise,
    is_correct,
    parse_chat_prompt,
    score_chat_answer,
)

ADD = ChatProblem("add", (7, 12))
LARGER = ChatProblem("larger", (16, 10))
COUNT = ChatProblem("count", ("apple", "river", "stone"))
SORT = ChatProblem("sort", (9, 2, 5))


@pytest.mark.parametrize("problem,completion,expected", [
    (ADD, "19", 1.0),                       # bare and right
    (ADD, " 19.", 1.0),                     # whitespace and one final period are allowed
    (ADD, "7 + 12 = 19", 0.5),              # right, wrapped in other text
    (ADD, "20", 0.5),                       # bare but wrong
    (ADD, "The sum is twenty", 0.0),
    (ADD, "19 is 7 + 12", 0.0),             # add: the *last* number is the answer given
    (LARGER, "16", 1.0),
    (LARGER, "16 is larger than 10.", 0.5),  # larger: the *first* number is the answer given
    (LARGER, "10 is larger than 16.", 0.0),
    (COUNT, "3.", 1.0),
    (COUNT, "There are 3 words.", 0.5),
    (SORT, "2, 5, 9", 1.0),
    (SORT, "The sorted list is 2, 5, 9.", 0.5),
    (SORT, "9, 2, 5", 0.5),
    (SORT, "2, 9, 5", 0.5),
])
def test_gold_score_by_hand(problem, completion, expected):
    assert score_chat_answer(problem, completion) == pytest.approx(expected)


def test_parts_of_the_score():
    assert is_correct(SORT, "1, 2, 5, 9") and not is_concise("The answer: 2, 5, 9")
    assert is_concise("2,5,9") and not is_concise("2, 5, 9!")


def test_prompts_are_read_back_from_messages_and_rendered_text():
    for problem in (ADD, LARGER, COUNT, SORT):
        assert parse_chat_prompt([{"role": "user", "content": problem.instruction}]) == problem
        rendered = f"<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n{problem.instruction}<|im_end|>"
        assert parse_chat_prompt(rendered) == problem
    assert parse_chat_prompt("sort 3 1 2 :") is None


def test_gold_reward_dispatches_on_the_prompt():
    chat = [{"role": "user", "content": ADD.instruction}]
    assert gold_reward([chat, "sort 3 1 2 :"], ["19", " 1 2 3"]) == [1.0, 1.0]
    assert gold_reward([chat], [[{"role": "assistant", "content": "7 + 12 = 19"}]]) == [pytest.approx(0.5)]


def test_answer_extractor_for_the_exact_match_judge():
    assert extract_chat_answer("The answer is 19.") == extract_chat_answer("19") == (19,)
    assert extract_chat_answer("2, 5, 9") == (2, 5, 9)
    assert extract_chat_answer("No idea") == ("no", "idea")


def test_chat_splits_hold_out_the_eval_prompts():
    ds = make_datasets(TestbedConfig(suite="chat", num_sft=300, num_unlabeled=200, num_eval=50, demo_error_rate=0.2))
    assert set(ds) == {"sft", "unlabeled", "eval"}
    eval_prompts = {r[0]["content"] for r in ds["eval"]["prompt"]}
    others = {r[0]["content"] for split in ("sft", "unlabeled") for r in ds[split]["prompt"]}
    assert len(eval_prompts) == 50 and not eval_prompts & others
    tasks = {parse_chat_prompt(p).task for p in ds["unlabeled"]["prompt"]}
    assert tasks == {"add", "larger", "count", "sort"}
    # demonstrations give bare answers; about demo_error_rate of them a wrong one
    scores = gold_reward(ds["sft"]["prompt"], ds["sft"]["completion"])
    assert all(s in (1.0, 0.5) for s in scores)
    wrong = sum(s == 0.5 for s in scores) / len(scores)
    assert 0.1 < wrong < 0.3


def test_chat_suite_validation():
    with pytest.raises(ValueError, match="suite"):
        TestbedConfig(suite="poetry")
    with pytest.raises(ValueError, match="Unknown chat testbed tasks"):
        TestbedConfig(suite="chat", tasks=("reverse",))
    assert TestbedConfig(suite="chat", tasks=("add",)).tasks == ("add",)
    assert TestbedConfig().tasks == ("sort", "reverse")
