"""The eval stage's KL estimate and response lengths."""

import copy

import torch

from icegrt_trl.policy_eval import response_lengths, sampled_kl
from icegrt_trl.testbed import build_tokenizer, make_datasets, tiny_causal_lm


def test_sampled_kl_is_zero_for_the_same_policy_and_positive_for_another():
    tok = build_tokenizer()
    prompts = make_datasets(num_sft=8, num_preferences=8, num_pmp=8, num_pref_eval=8, num_unlabeled=8,
                            num_eval=64)["eval"]["prompt"]
    policy = tiny_causal_lm("llama", tok, seed=0)
    same = sampled_kl(policy, copy.deepcopy(policy), tok, prompts, max_new_tokens=6)
    assert same["kl"] == 0.0 and 0 < same["sampled_length"] <= 6
    other = copy.deepcopy(policy)
    with torch.no_grad():
        other.lm_head.weight.add_(torch.randn_like(other.lm_head.weight) * 0.5)
    moved = sampled_kl(policy, other, tok, prompts, max_new_tokens=6)
    assert moved["kl"] > 0.1  # 64 samples of a clearly different policy


def test_response_lengths_count_tokens():
    tok = build_tokenizer()
    assert response_lengths(tok, [" 1 2 3", " sort", ""]) == [3, 1, 0]
