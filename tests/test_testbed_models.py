import pytest
import torch
from transformers import LlamaForCausalLM, Qwen2ForCausalLM

from icegrt_trl.testbed import build_tokenizer, count_parameters, tiny_causal_lm, tiny_sequence_classifier


@pytest.mark.parametrize("arch,cls", [("llama", LlamaForCausalLM), ("qwen2", Qwen2ForCausalLM)])
def test_causal_lm_factory(arch, cls):
    tok = build_tokenizer()
    model = tiny_causal_lm(arch, tok, seed=0)
    assert isinstance(model, cls)
    assert 100_000 < count_parameters(model) < 2_000_000
    batch = tok(["sort 3 1 :", "reverse 1 2 3 :"], return_tensors="pt", padding=True)
    logits = model(**batch).logits
    assert logits.shape == (2, batch["input_ids"].shape[1], len(tok))
    out = model.generate(**batch, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id,
                         eos_token_id=None)
    assert out.shape[1] == batch["input_ids"].shape[1] + 3  # no EOS to stop at: exactly 3 new tokens
    step = model(**batch).logits[:, -1].argmax(-1)  # greedy: the first new token is the argmax of the logits
    assert torch.equal(out[:, batch["input_ids"].shape[1]], step)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_sequence_classifier_factory(arch):
    tok = build_tokenizer()
    model = tiny_sequence_classifier(arch, tok, seed=1)
    assert type(model).__name__ == f"{'Llama' if arch == 'llama' else 'Qwen2'}ForSequenceClassification"
    batch = tok(["sort 3 1 : 1 3", "sort 3 :"], return_tensors="pt", padding=True)
    assert model(**batch).logits.shape == (2, 1)
    assert model.config.pad_token_id == tok.pad_token_id


def test_same_seed_same_weights_and_sizes():
    tok = build_tokenizer()
    a, b = tiny_causal_lm("llama", tok, seed=3), tiny_causal_lm("llama", tok, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    big = tiny_causal_lm("llama", tok, hidden_size=256, num_layers=2)
    assert big.config.hidden_size == 256 and big.config.num_hidden_layers == 2


def test_unknown_architecture():
    with pytest.raises(ValueError, match="Unknown testbed architecture 'gpt9'"):
        tiny_causal_lm("gpt9", build_tokenizer())
