"""Bad input fails early with a clear message, before any weight changes."""


import pytest
import torch
from datasets import Dataset

from icegrt_trl import PPOConfig, PPOTrainer
from icegrt_trl.testbed import build_tokenizer, tiny_causal_lm, tiny_sequence_classifier

SMALL = dict(hidden_size=32, num_layers=1, num_heads=2)


def cfg(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[], per_device_train_batch_size=4,
                num_mini_batches=1, num_ppo_epochs=1, max_steps=1, response_length=4, save_strategy="no",
                gradient_checkpointing=False, disable_tqdm=True, num_sample_generations=0, learning_rate=1e-2)
    base.update(kw)
    return PPOConfig(**base)


def prompts(n=8):
    return Dataset.from_dict({"prompt": [f"sort {i % 10} 1 2 :" for i in range(n)]})


def const_reward(prompts, completions, **kw):
    return [1.0] * len(prompts)


@pytest.fixture
def tok():
    return build_tokenizer()


def make(tmp_path, tok, reward=const_reward, dataset=None, **kw):
    model = tiny_causal_lm("llama", tok, **SMALL)
    trainer = PPOTrainer(args=cfg(tmp_path, **kw), processing_class=tok, model=model, reward_model=reward,
                         train_dataset=dataset if dataset is not None else prompts())
    return trainer, model


def test_dataset_without_prompt_names_columns(tmp_path, tok):
    with pytest.raises(ValueError, match=r"`prompt` column.*found columns \['question', 'answer'\]"):
        make(tmp_path, tok, dataset=Dataset.from_dict({"question": ["a"] * 8, "answer": ["b"] * 8}))


@pytest.mark.parametrize("bad, match", [
    (lambda prompts, completions, **kw: [1.0], "returned 1 rewards for 4 completions"),
    (lambda prompts, completions, **kw: [float("nan")] * len(prompts), "non-finite"),
    (lambda prompts, completions, **kw: [float("inf")] * len(prompts), "non-finite"),
    (lambda prompts, completions, **kw: [None] * len(prompts), "non-finite"),
])
def test_bad_reward_callable_fails_before_weights_change(tmp_path, tok, bad, match):
    trainer, model = make(tmp_path, tok, reward=bad)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        trainer.train()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_reward_model_with_other_tokenizer(tmp_path, tok):
    other = build_tokenizer()
    other.add_tokens(["extra1", "extra2"])
    rm = tiny_sequence_classifier("qwen2", other, **SMALL)
    with pytest.raises(ValueError, match="tokenizers differ.*reward_processing_classes"):
        make(tmp_path, tok, reward=rm)
    model = tiny_causal_lm("llama", tok, **SMALL)
    trainer = PPOTrainer(args=cfg(tmp_path), processing_class=tok, model=model, reward_model=rm,
                         reward_processing_classes=other, train_dataset=prompts())
    assert not trainer.reward_sources[0].same_tokenizer
    trainer.train()  # decodes, re-tokenizes with `other`, scores
    assert trainer.state.global_step == 1


@pytest.mark.parametrize("kw, match", [
    (dict(per_device_train_batch_size=3, num_samples_per_prompt=2), "does not divide by num_samples_per_prompt"),
    (dict(num_mini_batches=2, per_device_train_batch_size=3), "num_mini_batches=2 must divide per_device_train"),
    (dict(kl_penalty="loss", kl_estimator="k1"), "kl_penalty='loss' with kl_estimator='k1' does not regularize"),
    (dict(local_batch_size=16), "`local_batch_size` is derived"),
    (dict(world_size=2, mini_batch_size=4), "`mini_batch_size` is derived .*`world_size` is derived"),
    (dict(response_length=0), "response_length must be >= 1"),
    (dict(stop_token="eos", stop_token_id=1), "both `stop_token` and `stop_token_id`"),
    (dict(advantage_normalization="group"), "num_samples_per_prompt >= 2"),
])
def test_config_errors(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        cfg(tmp_path, **kw)


def test_dataset_smaller_than_a_rollout(tmp_path, tok):
    with pytest.raises(ValueError, match="one rollout needs 4 prompts"):
        make(tmp_path, tok, dataset=prompts(3))


def test_unknown_plugin_and_estimator(tmp_path, tok):
    with pytest.raises(ValueError, match="Unknown reward_scaling plugin 'nope'"):
        make(tmp_path, tok, reward_scaling="nope")
    with pytest.raises(ValueError, match="Unknown kl_estimator 'k9'"):
        make(tmp_path, tok, kl_estimator="k9")


def test_tokenizer_without_pad_uses_eos(tmp_path, tok):
    tok.pad_token = None
    with pytest.warns(UserWarning, match="no pad token; using its EOS token"):
        trainer, _ = make(tmp_path, tok)
    assert tok.pad_token == tok.eos_token
    trainer.train()


def test_long_prompts_truncated_from_left_with_count(tmp_path, tok):
    data = Dataset.from_dict({"prompt": ["sort " + " ".join(["1"] * 30) + " :"] * 3 + ["sort 1 2 :"] * 5})
    with pytest.warns(UserWarning, match="3 of 8 prompts in train_dataset are longer than max_prompt_length=10"):
        trainer, _ = make(tmp_path, tok, dataset=data, max_prompt_length=10)
    ids = trainer.train_dataset["input_ids"]
    assert max(len(x) for x in ids) == 10
    assert tok.decode(ids[0]).endswith("1 :")  # the end of the prompt is kept


def test_pretokenized_dataset(tmp_path, tok):
    data = Dataset.from_dict({"input_ids": [tok("sort 3 1 2 :")["input_ids"]] * 8})
    trainer, _ = make(tmp_path, tok, dataset=data)
    assert trainer.train_dataset["prompt"][0] == "sort 3 1 2 :"
    trainer.train()


def test_trl112_model_paths_are_accepted_and_the_trainer_says_it_ignores_them(tmp_path, tok):
    args = cfg(tmp_path, sft_model_path="EleutherAI/pythia-160m", reward_model_path="some/rm")
    assert args.sft_model_path == "EleutherAI/pythia-160m"  # accepted as in trl 1.12
    with pytest.warns(UserWarning, match=r"sft_model_path='EleutherAI/pythia-160m' is ignored by PPOTrainer"):
        PPOTrainer(args=args, processing_class=tok, model=tiny_causal_lm("llama", tok, **SMALL),
                   reward_model=const_reward, train_dataset=prompts())
