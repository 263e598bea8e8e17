"""Rollout sampling draws each token through the inverse CDF (one uniform per row) instead of ``torch.multinomial``
(one exponential per vocabulary entry): the same distribution, a cheaper draw on a CPU (issue 12)."""

import pytest
import torch

from icegrt_trl.ppo.generation import InverseCDFSampling, generate_rollouts, inverse_cdf_draw, \
    rollout_generation_config
from icegrt_trl.testbed import build_tokenizer, tiny_causal_lm


def test_inverse_cdf_draw_picks_the_bin_the_uniform_falls_in():
    probs = torch.tensor([[0.5, 0.25, 0.25]] * 4)  # cumulative 0.5, 0.75, 1.0
    u = torch.tensor([0.2, 0.5, 0.6, 1.0])
    assert inverse_cdf_draw(probs, u).tolist() == [0, 0, 1, 2]
    unnormalized = torch.tensor([[1.0, 1.0, 2.0]])  # cumulative 1, 2, 4: u = 0.5 → 2 → index 1
    assert inverse_cdf_draw(unnormalized, torch.tensor([0.5])).tolist() == [1]


def test_inverse_cdf_draw_never_picks_a_zero_probability_token():
    probs = torch.tensor([[0.5, 0.0, 0.5, 0.0]] * 3)  # cumulative 0.5, 0.5, 1.0, 1.0
    u = torch.tensor([0.5, 0.5000001, 1.0])
    assert inverse_cdf_draw(probs, u).tolist() == [0, 2, 2]


def test_the_draw_samples_softmax_of_the_scores():
    torch.manual_seed(0)
    n = 40_000
    probs = torch.tensor([0.5, 0.3, 0.2, 0.0])
    scores = probs.log().expand(n, 4).clone()  # log 0 = -inf: a token top-k / top-p removed
    out = InverseCDFSampling()(torch.zeros(n, 1, dtype=torch.long), scores)
    token = out.argmax(-1)
    assert torch.isinf(out).sum(-1).eq(3).all()  # only the drawn token stays finite, for generate's argmax
    freq = torch.bincount(token, minlength=4).double() / n
    assert freq[3] == 0
    assert torch.allclose(freq[:3], torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64), atol=0.01)  # ~4 std


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def test_rollout_sampling_draws_the_policy_distribution_without_multinomial(tok, monkeypatch):
    """The first sampled token of 4000 copies of one prompt, at temperature 0.7 with top-k 8, against
    softmax(top-8 logits / 0.7) of the model's own forward."""
    torch.manual_seed(0)
    model = tiny_causal_lm("llama", tok, hidden_size=32, num_layers=2, num_heads=2).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(40)  # peaked logits: temperature 0.7 moves the top probability from 0.28 to 0.34
    prompt = torch.tensor([tok("1 + 2 =", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=prompt).logits[0, -1] / 0.7
    top = logits.topk(8)
    expected = torch.zeros_like(logits).scatter_(0, top.indices, torch.softmax(top.values, 0))

    def no_multinomial(*a, **k):
        raise AssertionError("rollout sampling should not call torch.multinomial")

    monkeypatch.setattr(torch, "multinomial", no_multinomial)
    gen = rollout_generation_config(max_new_tokens=1, do_sample=True, temperature=0.7, top_k=8,
                                    pad_token_id=tok.pad_token_id)
    n = 4000
    with torch.no_grad():
        seq = generate_rollouts(model, prompt.expand(n, -1), torch.ones(n, prompt.shape[1], dtype=torch.long), gen)
    freq = torch.bincount(seq[:, -1], minlength=logits.shape[0]).float() / n
    assert freq[expected == 0].sum() == 0  # nothing outside the top 8
    assert (freq - expected).abs().max() < 0.03  # ~4 std at n = 4000; temperature 1 would be off by 0.06
