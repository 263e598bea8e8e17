import pytest

from icegrt_trl.testbed import gold_reward, parse_prompt, score_answer, win_rate_of_completions


def test_problem_parsing():
    p = parse_prompt("sort 3 1 2 :")
    assert (p.task, p.digits, p.target) == ("sort", (3, 1, 2), (1, 2, 3))
    assert parse_prompt([{"role": "user", "content": "reverse 1 2"}]).target == (2, 1)
    with pytest.raises(ValueError, match="Not a testbed prompt"):
        parse_prompt("hello there")


@pytest.mark.parametrize("answer,target,expected", [
    ([1, 2, 3], (1, 2, 3), 1.0),
    ([], (1, 2, 3), 0.0),
    ([2, 1, 3], (1, 2, 3), 0.5 * (1 + 3) / 3),       # right digits, one position right
    ([1, 2], (1, 2, 3), 0.5 * (2 + 2) / 3),           # a digit missing
    ([1, 2, 3, 3], (1, 2, 3), 0.5 * (3 + 3) / 4),     # padding costs
    (["know", 2, 3], (1, 2, 3), 0.5 * (2 + 2) / 3),   # a word is wrong
    (["the", "answer", "is", 1, 2, 3], (1, 2, 3), 0.5 * (0 + 3) / 6),  # the demonstrators' verbose habit
    ([7, 8, 9], (1, 2, 3), 0.0),
])
def test_score_answer_by_hand(answer, target, expected):
    assert score_answer(answer, target) == pytest.approx(expected)


def test_gold_reward_reads_text_and_stops_at_eos():
    prompts = ["sort 3 1 2 :", "reverse 1 2 :", "sort 5 :"]
    completions = [" 1 2 3", " 2 1 <eos> 9 9", " I don't know"]
    assert gold_reward(prompts, completions) == [1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="2 prompts and 1 completions"):
        gold_reward(prompts[:2], completions[:1])


def test_win_rate_by_hand():
    prompts = ["sort 2 1 :", "sort 2 1 :", "sort 2 1 :", "sort 2 1 :"]
    a = [" 1 2", " 1 2", " 2 1", " 1"]
    b = [" 2 1", " 1 2", " 1 2", " 9"]
    # win, tie, loss, win → (1 + 0.5 + 0 + 1) / 4
    assert win_rate_of_completions(prompts, a, b) == pytest.approx(0.625)
    assert win_rate_of_completions(prompts, b, a) == pytest.approx(0.375)


def test_judge_on_a_model():
    from icegrt_trl.testbed import build_tokenizer, generate_completions, mean_gold_score, tiny_causal_lm

    tok = build_tokenizer()
    model = tiny_causal_lm("qwen2", tok)
    model.train()
    prompts = ["sort 3 1 2 :", "reverse 4 5 6 :"]
    out = generate_completions(model, tok, prompts, max_new_tokens=4, do_sample=True, num_return_sequences=3, seed=0)
    assert len(out) == 6 and all(isinstance(c, str) for c in out)
    assert model.training  # generation restores the train/eval mode it found
    assert 0.0 <= mean_gold_score(model, tok, prompts, max_new_tokens=4) < 0.5  # random weights score ~0
