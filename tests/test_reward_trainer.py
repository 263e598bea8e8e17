"""RewardTrainer: identical to TRL's with our options off; label smoothing; GRM (plain, LoRA, 4-bit QLoRA); plugins."""

import math
import os

import pytest
import torch
import trl
from peft import LoraConfig

from icegrt_trl import GRMRewardModel, RewardConfig, RewardTrainer
from icegrt_trl.plugins.registry import PluginRegistryError
from icegrt_trl.reward.plugins import PluginLoss, RewardLossPlugin
from icegrt_trl.reward.trainer import PLUGIN_STATE_FILE
from icegrt_trl.testbed import tiny_causal_lm, tiny_sequence_classifier

SMALL = dict(hidden_size=32, num_layers=2)


def _losses(trainer, key="loss"):
    return [h[key] for h in trainer.state.log_history if key in h and "train_runtime" not in h]


def _grm(tok, head="linear", **kw):
    return GRMRewardModel.from_causal_lm(tiny_causal_lm("llama", tok, **{**SMALL, **kw}), head_type=head)


def test_identical_to_trl_step_by_step(reward_tok, reward_data, reward_args, tmp_path):
    train = reward_data["preferences"].map(lambda ex, i: {"margin": (i % 3) * 0.5}, with_indices=True)
    common = dict(output_dir=str(tmp_path / "x"), per_device_train_batch_size=8, max_steps=4, learning_rate=1e-3,
                  logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, bf16=False, seed=3, max_length=32,
                  gradient_checkpointing=False, disable_tqdm=True, center_rewards_coefficient=0.01)
    theirs = trl.RewardTrainer(model=tiny_sequence_classifier("llama", reward_tok, **SMALL),
                               args=trl.RewardConfig(**common), train_dataset=train, processing_class=reward_tok)
    theirs.train()
    ours = RewardTrainer(model=tiny_sequence_classifier("llama", reward_tok, **SMALL), args=RewardConfig(**common),
                         train_dataset=train, processing_class=reward_tok)
    ours.train()
    assert len(_losses(ours)) == 4
    assert _losses(ours) == _losses(theirs)  # bit for bit
    assert _losses(ours, "grad_norm") == _losses(theirs, "grad_norm")


def test_label_smoothing_adds_eps_times_mean_margin(reward_tok, reward_data, reward_args):
    def first_step(eps):
        t = RewardTrainer(model=tiny_sequence_classifier("llama", reward_tok, **SMALL),
                          args=reward_args(max_steps=1, label_smoothing=eps), train_dataset=reward_data["preferences"],
                          processing_class=reward_tok)
        t.train()
        return t.state.log_history[0]

    plain, smooth = first_step(0.0), first_step(0.2)
    # −(1−ε)·log σ(d) − ε·log σ(−d) = −log σ(d) + ε·d
    assert smooth["loss"] == pytest.approx(plain["loss"] + 0.2 * plain["margin"], abs=1e-6)
    assert smooth["loss"] != plain["loss"]


@pytest.mark.parametrize("reg", ["sft", "dpo_noref", "dpo"])
def test_grm_loss_is_the_weighted_sum(reward_tok, reward_data, reward_args, reg):
    trainer = RewardTrainer(model=_grm(reward_tok), args=reward_args(grm_regularizer=reg, grm_alpha=0.3, max_steps=2),
                            train_dataset=reward_data["preferences"], processing_class=reward_tok)
    trainer.train()
    first = trainer.state.log_history[0]
    assert first["loss"] == pytest.approx(0.7 * first["loss/bt"] + 0.3 * first["grm/reg_loss"], rel=1e-5)
    assert first["grm/logps_chosen"] < 0  # summed log-probs of the response tokens
    if reg == "dpo":  # at step 0 the policy is the reference: the DPO term is log 2 exactly
        assert first["grm/reg_loss"] == pytest.approx(math.log(2), abs=1e-6)
        assert trainer.state.log_history[1]["grm/reg_loss"] != pytest.approx(math.log(2), abs=1e-6)
    if reg == "sft":  # −log σ(β·log π)
        assert first["grm/reg_loss"] == pytest.approx(-math.log(1 / (1 + math.exp(-0.1 * first["grm/logps_chosen"]))),
                                                      rel=0.05)


def test_grm_prompt_tokens_are_masked(reward_tok, reward_data, reward_args):
    trainer = RewardTrainer(model=_grm(reward_tok), args=reward_args(grm_regularizer="sft"),
                            train_dataset=reward_data["preferences"], processing_class=reward_tok)
    row = trainer.train_dataset[0]
    batch = trainer.data_collator([row])
    prompt_len = len(reward_tok(reward_data["preferences"][0]["prompt"])["input_ids"])
    assert row["chosen_prompt_len"] == prompt_len
    mask = batch["completion_mask"][0]
    assert mask[:prompt_len].sum() == 0 and mask[prompt_len:len(row["chosen_ids"])].all()
    assert mask.sum() == len(row["chosen_ids"]) - prompt_len


def test_grm_with_lora_uses_adapter_off_reference(reward_tok, reward_data, reward_args):
    model = _grm(reward_tok)
    lm_head = model.lm.lm_head.weight.detach().clone()
    head = model.score.summary.weight.detach().clone()
    peft = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                      modules_to_save=["score"])
    trainer = RewardTrainer(model=model, args=reward_args(grm_regularizer="dpo", grm_alpha=0.5),
                            train_dataset=reward_data["preferences"], processing_class=reward_tok, peft_config=peft)
    plugin = trainer.loss_plugins[0]
    assert plugin._use_adapter_off and plugin._reference is None  # no second copy of the model
    trainer.train()
    assert trainer.state.log_history[0]["grm/reg_loss"] == pytest.approx(math.log(2), abs=1e-6)
    base = trainer.model.get_base_model()
    assert torch.equal(base.lm.lm_head.weight, lm_head)  # LM head frozen
    trained_head = trainer.model.base_model.model.score.modules_to_save["default"].summary.weight
    assert not torch.equal(trained_head, head)  # reward head trained


def test_grm_with_4bit_qlora_on_cpu(reward_tok, reward_data, reward_args, tmp_path):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    # bitsandbytes' CPU kernels need in_features >= the 64-wide quantization block
    tiny_causal_lm("llama", reward_tok, hidden_size=64, num_layers=2).save_pretrained(tmp_path / "lm")
    lm = AutoModelForCausalLM.from_pretrained(
        tmp_path / "lm", quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                                  bnb_4bit_compute_dtype=torch.float32))
    assert lm.model.layers[0].self_attn.q_proj.weight.dtype == torch.uint8
    four_bit = [m for m in lm.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    for m in four_bit:  # as bitsandbytes sets it on a CPU with AVX512-BF16: repack for inference in eval mode
        m.support_avx512bf16_for_cpu = True
    model = GRMRewardModel.from_causal_lm(lm, head_type="mlp")
    peft = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                      modules_to_save=["score"])
    trainer = RewardTrainer(model=model, args=reward_args(grm_regularizer="dpo", max_steps=30, learning_rate=3e-3),
                            train_dataset=reward_data["preferences"], processing_class=reward_tok, peft_config=peft,
                            eval_dataset=reward_data["preferences"])
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    # evaluate() ran the base in eval mode without grad, and the 4-bit layers still have their backward: the
    # trainer stopped bitsandbytes from repacking them (a repacked layer trains its LoRA adapter without gradient)
    assert four_bit and not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in four_bit)
    assert all(math.isfinite(x) for x in _losses(trainer))
    # it learns: the 4-bit base with LoRA ranks the training pairs better, with a lower loss
    assert after["eval_accuracy"] >= before["eval_accuracy"] + 0.15, (before, after)
    assert after["eval_loss"] < before["eval_loss"] - 0.05


class _CountingPlugin(RewardLossPlugin):
    """A UML-shaped plugin: own parameter, own unlabeled dataset, reads hidden states; state must survive resume."""

    name = "counting"

    def __init__(self, dataset):
        super().__init__()
        self.dataset = dataset
        self.scale = torch.nn.Parameter(torch.tensor(1.0))
        self.register_buffer("steps", torch.tensor(0))
        self.seen_extra = 0

    def extra_dataset(self, trainer):
        return self.dataset

    def extra_collator(self, trainer):
        return lambda rows: {"n": torch.tensor(len(rows))}

    def forward_kwargs(self, trainer, mode):
        return {"output_hidden_states": True}

    def compute_loss(self, ctx):
        if ctx.mode == "train":
            assert ctx.extra_batch is not None
            self.seen_extra += int(ctx.extra_batch["n"])
            self.steps += 1
        hidden = ctx.outputs.last_hidden_state
        return PluginLoss(loss=0.01 * (self.scale * hidden.mean()) ** 2, metrics={"counting/scale": self.scale.item()})


def test_plugin_hooks_optimizer_and_checkpoint_state(reward_tok, reward_data, reward_args, tmp_path):
    plugin = _CountingPlugin(reward_data["unlabeled"])
    args = reward_args(max_steps=2, save_strategy="steps", save_steps=2, output_dir=str(tmp_path / "run"))
    trainer = RewardTrainer(model=_grm(reward_tok), args=args, train_dataset=reward_data["preferences"],
                            processing_class=reward_tok, loss_plugins=[plugin])
    trainer.train()
    assert plugin.steps.item() == 2 and plugin.seen_extra == 16
    assert plugin.scale.item() != 1.0  # its parameter is in the optimizer
    ckpt = tmp_path / "run" / "checkpoint-2"
    assert (ckpt / PLUGIN_STATE_FILE).is_file()
    fresh = _CountingPlugin(reward_data["unlabeled"])
    resumed = RewardTrainer(model=_grm(reward_tok), args=reward_args(max_steps=3, output_dir=str(tmp_path / "run")),
                            train_dataset=reward_data["preferences"], processing_class=reward_tok,
                            loss_plugins=[fresh])
    resumed.train(resume_from_checkpoint=str(ckpt))
    assert fresh.steps.item() == 3  # 2 restored + 1 new step


def test_plugins_by_config_string_and_unknown_name(reward_tok, reward_data, reward_args):
    trainer = RewardTrainer(model=_grm(reward_tok), args=reward_args(loss_plugins=["grm"]),
                            train_dataset=reward_data["preferences"], processing_class=reward_tok)
    assert trainer.loss_plugins[0].describe() == "grm(regularizer=sft, alpha=0.01, beta=0.1)"
    with pytest.raises(PluginRegistryError, match="Unknown reward_loss plugin 'umll'"):
        RewardTrainer(model=_grm(reward_tok), args=reward_args(loss_plugins=["umll"]),
                      train_dataset=reward_data["preferences"], processing_class=reward_tok)


def test_model_card_states_head_and_loss(reward_tok, reward_data, reward_args, tmp_path):
    trainer = RewardTrainer(model=_grm(reward_tok, head="mlp"), args=reward_args(grm_regularizer="sft", max_steps=1),
                            train_dataset=reward_data["preferences"], processing_class=reward_tok)
    trainer.train()
    trainer.save_model()
    trainer.create_model_card()
    card = open(os.path.join(trainer.args.output_dir, "README.md")).read()
    assert "head type: **mlp**" in card and "grm(regularizer=sft" in card and "rows_used 64" in card
    reloaded = GRMRewardModel.from_pretrained(trainer.args.output_dir, head_type="mlp")
    batch = reward_tok(["sort 1 2 : 1 2<eos>"], return_tensors="pt")
    assert reloaded(**batch).logits.shape == (1, 1)
