"""GRM reward model: LM head kept, padding-invariant rewards, head type saved and checked on load."""

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from icegrt_trl.reward.modeling import GRMConfig, GRMRewardModel, HeadTypeMismatchError, last_token_index
from icegrt_trl.testbed import build_tokenizer, tiny_causal_lm, tiny_sequence_classifier

TEXTS = ["sort 3 1 2 : 1 2 3<eos>", "reverse 1 : 1<eos>"]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def _grm(tok, arch="llama", head="mlp"):
    return GRMRewardModel.from_causal_lm(tiny_causal_lm(arch, tok, hidden_size=32, num_layers=2), head_type=head).eval()


def test_last_token_index_left_right_and_no_padding():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert last_token_index(mask).tolist() == [2, 4, 4]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_reward_is_the_same_with_left_right_and_no_padding(tok, arch):
    model = _grm(tok, arch)
    side = tok.padding_side
    try:
        tok.padding_side = "left"
        left = model(**tok(TEXTS, padding=True, return_tensors="pt")).logits
        tok.padding_side = "right"
        right = model(**tok(TEXTS, padding=True, return_tensors="pt")).logits
    finally:
        tok.padding_side = side
    alone = torch.cat([model(**tok([t], return_tensors="pt")).logits for t in TEXTS])
    assert left.shape == (2, 1)
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=0)


def test_wrapping_keeps_the_lm_and_its_head(tok):
    lm = tiny_causal_lm("llama", tok, hidden_size=32, num_layers=2).eval()
    batch = tok(["sort 3 1 2 : 1 2 3<eos>"], return_tensors="pt")
    expected = lm(**batch).logits
    model = GRMRewardModel.from_causal_lm(lm, head_type="linear").eval()
    out = model(**batch, return_lm_logits=True)
    torch.testing.assert_close(out.lm_logits, expected)
    assert model(**batch).lm_logits is None  # LM logits only on request (they are the big tensor)
    assert isinstance(model.score.summary, torch.nn.Linear)


def test_mlp_head_shape(tok):
    model = _grm(tok, head="mlp")
    first, _, last = model.score.summary
    assert (first.in_features, first.out_features, last.out_features) == (32, 1024, 1)
    assert model.config.num_labels == 1


def test_causal_lm_without_head_and_bad_head_type_are_rejected(tok):
    with pytest.raises(ValueError, match="head_type='conv' is not one of"):
        GRMConfig(head_type="conv")
    clf = tiny_sequence_classifier("llama", tok, hidden_size=32, num_layers=2)
    with pytest.raises(ValueError, match="has no LM head"):
        GRMRewardModel.from_causal_lm(clf)


def test_save_load_roundtrip_and_head_check(tok, tmp_path):
    model = _grm(tok, head="mlp")
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    model.save_pretrained(tmp_path)
    assert "head type: **mlp**" in (tmp_path / "README.md").read_text()
    loaded = GRMRewardModel.from_pretrained(tmp_path, head_type="mlp").eval()
    torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits)
    auto = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()  # plugs in where TRL expects
    assert isinstance(auto, GRMRewardModel)
    with pytest.raises(HeadTypeMismatchError, match="saved with head_type='mlp', but head_type='linear'"):
        GRMRewardModel.from_pretrained(tmp_path, head_type="linear")
    # a config that lies about the head is caught by the weights check, not loaded silently
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["head_type"] = "linear"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(HeadTypeMismatchError, match="do not fit head_type='linear'"):
        GRMRewardModel.from_pretrained(tmp_path)


def test_loading_a_non_grm_checkpoint_fails(tok, tmp_path):
    tiny_sequence_classifier("llama", tok, hidden_size=32, num_layers=2).save_pretrained(tmp_path)
    with pytest.raises(HeadTypeMismatchError, match="not a GRM reward model checkpoint"):
        GRMRewardModel.from_pretrained(tmp_path)
