"""Reward evaluation: accuracy with ties, bootstrap intervals, report and model card."""

import json

import numpy as np
import pytest
import torch
from datasets import Dataset

from icegrt_trl import GRMRewardModel
from icegrt_trl.reward.evaluation import (
    bootstrap_ci,
    evaluate_reward_model,
    load_reward_model,
    pairwise_scores,
    score_completions,
    write_reward_eval,
)
from icegrt_trl.testbed import gold_reward, tiny_causal_lm


def test_pairwise_scores_count_ties_as_half():
    assert pairwise_scores([2.0, 1.0, 0.0], [1.0, 1.0, 3.0]).tolist() == [1.0, 0.5, 0.0]


def test_bootstrap_ci():
    assert bootstrap_ci([1.0] * 10) == (1.0, 1.0)
    low, high = bootstrap_ci([1.0, 0.0] * 100, n_resamples=2000)
    # binomial mean 0.5 with n = 200: standard error 0.035, 95% interval ≈ ±0.069
    assert low == pytest.approx(0.5 - 0.069, abs=0.015) and high == pytest.approx(0.5 + 0.069, abs=0.015)
    assert bootstrap_ci([1.0, 0.0] * 100, seed=1) == bootstrap_ci([1.0, 0.0] * 100, seed=1)
    with pytest.raises(ValueError, match="at least one value"):
        bootstrap_ci([])


class _GoldRM(torch.nn.Module):
    """A 'reward model' that outputs the gold reward of the decoded text: accuracy on clean pairs must be 1."""

    def __init__(self, tok):
        super().__init__()
        self.tok = tok
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask):
        texts = self.tok.batch_decode(input_ids, skip_special_tokens=True)
        prompts = [t.split(":")[0] + " :" for t in texts]
        completions = [" " + t.split(":", 1)[1].strip() for t in texts]
        return type("O", (), {"logits": torch.tensor(gold_reward(prompts, completions)).unsqueeze(-1)})


def test_evaluate_reward_model_with_gold_scorer(reward_tok, reward_data, tmp_path):
    results = evaluate_reward_model(_GoldRM(reward_tok), reward_tok,
                                    {"id": reward_data["preferences_id"], "ood": reward_data["preferences_ood"],
                                     "noisy": reward_data["preferences"]})
    assert results["id"]["accuracy"] == 1.0 and results["ood"]["accuracy"] == 1.0
    assert results["id"]["n"] == 32 and results["id"]["ci_low"] == 1.0
    assert 0.6 < results["noisy"]["accuracy"] < 0.95  # 20% flipped labels
    assert results["noisy"]["ci_low"] < results["noisy"]["accuracy"] < results["noisy"]["ci_high"]
    model_dir = tmp_path / "rm"
    model_dir.mkdir()
    (model_dir / "README.md").write_text("# my rm\n")
    write_reward_eval(results, tmp_path / "report", model_dir=model_dir)
    assert json.loads((tmp_path / "report" / "reward_eval.json").read_text())["ood"]["accuracy"] == 1.0
    card = (model_dir / "README.md").read_text()
    assert card.startswith("# my rm") and "| ood | 32 | 1.000 | [1.000, 1.000] | 0 |" in card
    write_reward_eval(results, tmp_path / "report", model_dir=model_dir)  # rewriting replaces the section
    assert (model_dir / "README.md").read_text().count("| ood |") == 1


def test_scores_match_the_model_and_loader(reward_tok, tmp_path):
    model = GRMRewardModel.from_causal_lm(tiny_causal_lm("llama", reward_tok, hidden_size=32, num_layers=2),
                                          head_type="linear").eval()
    model.save_pretrained(tmp_path)
    reward_tok.save_pretrained(tmp_path)
    loaded, tok = load_reward_model(tmp_path, head_type="linear")
    prompts, completions = ["sort 2 1 :", "reverse 1 2 3 :"], [" 1 2", " 3 2 1"]
    got = score_completions(loaded, tok, prompts, completions, batch_size=1)
    direct = model(**reward_tok(["sort 2 1 : 1 2<eos>"], return_tensors="pt")).logits.item()
    assert got[0] == pytest.approx(direct, abs=1e-5)
    assert np.allclose(got, score_completions(loaded, tok, prompts, completions, batch_size=2), atol=1e-5)


def test_missing_columns(reward_tok):
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['rejected'\]"):
        evaluate_reward_model(_GoldRM(reward_tok), reward_tok, Dataset.from_list([{"prompt": "a", "chosen": "b"}]))
