"""Bad input: each error names the problem and the way out."""

import pytest
from datasets import Dataset

from icegrt_trl import GRMRewardModel, RewardConfig, RewardTrainer
from icegrt_trl.testbed import tiny_causal_lm, tiny_sequence_classifier

SMALL = dict(hidden_size=32, num_layers=2)


def _trainer(tok, args, rows, model=None):
    model = model or tiny_sequence_classifier("llama", tok, **SMALL)
    return RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)


GOOD = {"prompt": "sort 2 1 :", "chosen": " 1 2", "rejected": " 2 1"}


def test_missing_chosen_or_rejected(reward_tok, reward_args):
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['rejected'\].*needs 'chosen' and 'rejected'"):
        _trainer(reward_tok, reward_args(), [{"prompt": "sort 2 1 :", "chosen": " 1 2"}])


def test_identical_pairs_dropped_and_counted_or_error(reward_tok, reward_args):
    same = {"prompt": "sort 2 1 :", "chosen": " 1 2", "rejected": " 1 2"}
    trainer = _trainer(reward_tok, reward_args(), [GOOD, same, GOOD])
    assert trainer.data_report["train"]["dropped_identical"] == 1
    assert len(trainer.train_dataset) == 2
    with pytest.raises(ValueError, match=r"1 row\(s\) of the train dataset have chosen == rejected.*identical_pairs='drop'"):
        _trainer(reward_tok, reward_args(identical_pairs="error"), [GOOD, same])


def test_empty_completions(reward_tok, reward_args):
    empty = {"prompt": "sort 2 1 :", "chosen": " 1 2", "rejected": "  "}
    with pytest.raises(ValueError, match=r"1 row\(s\) of the train dataset have an empty chosen or rejected completion"):
        _trainer(reward_tok, reward_args(), [GOOD, empty])
    trainer = _trainer(reward_tok, reward_args(empty_completions="drop"), [GOOD, empty, GOOD])
    assert trainer.data_report["train"]["dropped_empty"] == 1


def test_over_length_dropped_truncated_or_error(reward_tok, reward_args):
    long = {"prompt": "sort " + "3 " * 20 + ":", "chosen": " 3" * 20, "rejected": " 3" * 19}
    trainer = _trainer(reward_tok, reward_args(max_length=16), [GOOD, long])
    assert trainer.data_report["train"]["dropped_over_length"] == 1 and len(trainer.train_dataset) == 1
    trainer = _trainer(reward_tok, reward_args(max_length=16, over_length="truncate"), [GOOD, long])
    assert trainer.data_report["train"]["truncated_over_length"] == 1
    row = trainer.train_dataset[1]
    assert len(row["chosen_ids"]) == 16 and row["chosen_ids"][-1] == reward_tok.eos_token_id  # the end survives
    assert row["chosen_prompt_len"] == 0  # the prompt was cut first
    with pytest.raises(ValueError, match=r"more than max_length=16 tokens.*over_length='drop'"):
        _trainer(reward_tok, reward_args(max_length=16, over_length="error"), [GOOD, long])


def test_grm_option_on_model_without_lm_head(reward_tok, reward_args):
    with pytest.raises(ValueError, match="needs a reward model that keeps its causal LM head.*LlamaForSequenceClassification"):
        _trainer(reward_tok, reward_args(grm_regularizer="sft"), [GOOD])


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_grm_alpha_outside_unit_interval(reward_args, alpha):
    with pytest.raises(ValueError, match=rf"grm_alpha={alpha} must lie in \[0, 1\]"):
        reward_args(grm_regularizer="sft", grm_alpha=alpha)


def test_other_config_errors(reward_tok, reward_args):
    with pytest.raises(ValueError, match="grm_regularizer='kto' must be None or one of"):
        reward_args(grm_regularizer="kto")
    with pytest.raises(ValueError, match="over_length='cut' must be one of"):
        reward_args(over_length="cut")
    with pytest.raises(ValueError, match=r"label_smoothing=0.5 must lie in \[0, 0.5\)"):
        reward_args(label_smoothing=0.5)
    import trl

    with pytest.raises(TypeError, match="needs an icegrt_trl.RewardConfig"):
        RewardTrainer(model=GRMRewardModel.from_causal_lm(tiny_causal_lm("llama", reward_tok, **SMALL)),
                      args=trl.RewardConfig(output_dir="/tmp/x", use_cpu=True, bf16=False, report_to=[]),
                      train_dataset=Dataset.from_list([GOOD]), processing_class=reward_tok)


def test_every_trl_reward_config_field_keeps_trls_default():
    import dataclasses

    import trl

    kw = dict(output_dir="/tmp/x", use_cpu=True)
    ours, theirs = RewardConfig(**kw), trl.RewardConfig(**kw)
    differing = [f.name for f in dataclasses.fields(trl.RewardConfig)
                 if f.name != "logging_dir" and getattr(ours, f.name) != getattr(theirs, f.name)]
    assert differing == []


def _grm_model(tok):
    return GRMRewardModel.from_causal_lm(tiny_causal_lm("llama", tok, **SMALL), head_type="linear")


def test_grm_named_in_loss_plugins_reads_its_settings_from_the_config(reward_tok, reward_args):
    trainer = _trainer(reward_tok, reward_args(loss_plugins=["grm"], grm_alpha=0.3, grm_beta=0.2), [GOOD],
                       model=_grm_model(reward_tok))
    (grm,) = trainer.loss_plugins
    assert (grm.regularizer, grm.alpha, grm.beta) == ("sft", 0.3, 0.2)  # was α = 0.01 (the class default)
    both = _trainer(reward_tok, reward_args(loss_plugins=["grm"], grm_regularizer="dpo_noref", grm_alpha=0.3),
                    [GOOD], model=_grm_model(reward_tok))
    assert [p.describe() for p in both.loss_plugins] == ["grm(regularizer=dpo_noref, alpha=0.3, beta=0.1)"]


def test_grm_given_twice_is_refused(reward_tok, reward_args):
    from icegrt_trl.reward.plugins import GRMRegularizer

    with pytest.raises(ValueError, match=r"'grm' reward-loss plugin is given twice"):
        RewardTrainer(model=_grm_model(reward_tok), args=reward_args(grm_regularizer="sft"),
                      train_dataset=Dataset.from_list([GOOD]), processing_class=reward_tok,
                      loss_plugins=[GRMRegularizer("sft", alpha=0.5)])
