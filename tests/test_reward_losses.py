"""Reward losses against hand-computed values."""

import math

import pytest
import torch

from icegrt_trl.reward.losses import (
    bradley_terry_loss,
    center_rewards_penalty,
    grm_dpo_loss,
    grm_dpo_noref_loss,
    grm_regularizer_loss,
    grm_sft_loss,
    sequence_logps,
)

LOG1P_EXP_M1 = math.log(1 + math.exp(-1))  # −log σ(1) = 0.3132616875
T = torch.tensor


def test_bradley_terry_plain():
    # −mean(log σ(1), log σ(0)) = (0.31326 + log 2) / 2
    assert bradley_terry_loss(T([1.0, 0.0]), T([0.0, 0.0])).item() == pytest.approx((LOG1P_EXP_M1 + math.log(2)) / 2)


def test_bradley_terry_margin_is_subtracted():
    assert bradley_terry_loss(T([2.0]), T([0.0]), margin=T([1.0])).item() == pytest.approx(LOG1P_EXP_M1)


def test_bradley_terry_label_smoothing():
    # −0.9·log σ(1) − 0.1·log σ(−1) = 0.9·0.31326 + 0.1·1.31326 = 0.41326 (= −log σ(d) + ε·d)
    assert bradley_terry_loss(T([1.0]), T([0.0]), label_smoothing=0.1).item() == pytest.approx(LOG1P_EXP_M1 + 0.1)
    with pytest.raises(ValueError, match="label_smoothing"):
        bradley_terry_loss(T([1.0]), T([0.0]), label_smoothing=0.5)


def test_center_rewards_penalty():
    assert center_rewards_penalty(T([1.0, 2.0]), T([1.0, -2.0])).item() == pytest.approx((4 + 0) / 2)


def test_sequence_logps_uniform_logits_and_prompt_mask():
    logits = torch.zeros(1, 4, 4)
    ids = T([[0, 1, 2, 3]])
    mask = T([[0, 0, 1, 1]])  # two response tokens, each log(1/4)
    assert sequence_logps(logits, ids, mask).item() == pytest.approx(-2 * math.log(4))


def test_sequence_logps_uses_previous_position_logits():
    logits = torch.zeros(1, 3, 2)
    logits[0, 1, 1] = math.log(3)  # position 1 predicts token 1 with probability 3/4
    ids = T([[0, 0, 1]])
    mask = T([[0, 1, 1]])
    assert sequence_logps(logits, ids, mask).item() == pytest.approx(math.log(0.5) + math.log(0.75))
    # a sum, not a mean: doubling the response doubles the value
    assert sequence_logps(torch.zeros(1, 5, 4), T([[0, 1, 1, 1, 1]]), T([[0, 1, 1, 1, 1]])).item() == pytest.approx(
        -4 * math.log(4))


def test_sequence_logps_shape_error():
    with pytest.raises(ValueError, match="must agree"):
        sequence_logps(torch.zeros(1, 3, 2), T([[0, 1]]), T([[0, 1]]))


def test_grm_regularizers():
    assert grm_sft_loss(T([-10.0]), beta=0.1).item() == pytest.approx(math.log(1 + math.e))
    assert grm_dpo_noref_loss(T([-5.0]), T([-15.0]), beta=0.1).item() == pytest.approx(LOG1P_EXP_M1)
    assert grm_dpo_loss(T([-5.0]), T([-15.0]), T([-6.0]), T([-6.0]), beta=0.1).item() == pytest.approx(LOG1P_EXP_M1)
    # policy margin equal to the reference margin → log 2
    assert grm_dpo_loss(T([-5.0]), T([-15.0]), T([-5.0]), T([-15.0]), beta=0.1).item() == pytest.approx(math.log(2))
    assert grm_regularizer_loss("dpo_noref", T([-5.0]), T([-15.0]), 0.1).item() == pytest.approx(LOG1P_EXP_M1)
    with pytest.raises(ValueError, match="reference"):
        grm_regularizer_loss("dpo", T([-5.0]), T([-15.0]), 0.1)
    with pytest.raises(ValueError, match="Unknown GRM regularizer"):
        grm_regularizer_loss("kto", T([-5.0]), T([-15.0]), 0.1)
