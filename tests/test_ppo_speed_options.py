"""The PPO speed changes of issue 12 change cost, not results: each is shown to take effect and to leave the
numbers as they were (bit-equal where the claim is bit-equality)."""

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from icegrt_trl import PPOConfig, PPOTrainer
from icegrt_trl.ppo.grouped_attention import PADDING_FREE
from icegrt_trl.ppo.plugins import PPOHook
from icegrt_trl.ppo import trainer as trainer_module
from icegrt_trl.ppo.modeling import accepts_logits_to_keep, hold_matmul_weights_in, logits_kwargs
from icegrt_trl.ppo.trainer import chunked_cross_entropy
from icegrt_trl.testbed import build_tokenizer, gold_reward, make_datasets, tiny_causal_lm, tiny_config, \
    tiny_sequence_classifier

SMALL = dict(hidden_size=32, num_layers=2, num_heads=2)


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def prompts():
    return make_datasets(num_sft=10, num_preferences=10, num_pmp=10, num_pref_eval=10, num_unlabeled=32,
                         num_eval=4)["unlabeled"]


def cfg(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[], per_device_train_batch_size=4,
                num_mini_batches=1, num_ppo_epochs=2, max_steps=2, response_length=6, save_strategy="no",
                gradient_checkpointing=False, disable_tqdm=True, num_sample_generations=0, learning_rate=1e-3,
                temperature=1.0, stop_token="eos", logging_steps=1, seed=0)
    base.update(kw)
    return PPOConfig(**base)


def test_matmul_weights_held_in_bf16_give_the_bits_autocast_gives(tok):
    config = tiny_config("llama", tok, **SMALL)
    config.tie_word_embeddings = True  # as SmolLM2: the LM head is the embedding, which must stay fp32
    model = AutoModelForCausalLM.from_config(config).eval().requires_grad_(False)
    original = AutoModelForCausalLM.from_config(config).eval()
    original.load_state_dict(model.state_dict())
    n_linear = sum(isinstance(m, nn.Linear) for m in model.modules())
    cast = hold_matmul_weights_in(model, torch.bfloat16)
    assert cast == n_linear - 1  # every Linear but the tied LM head
    body = model.model
    assert body.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    assert body.embed_tokens.weight.dtype == torch.float32 and body.norm.weight.dtype == torch.float32
    assert model.lm_head.weight.dtype == torch.float32
    ids = torch.randint(3, len(tok), (2, 9))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(model(input_ids=ids).logits, original(input_ids=ids).logits)


def test_trainer_holds_frozen_models_in_bf16_and_keeps_step0_kl_exactly_zero(tmp_path, tok, prompts):
    policy = tiny_causal_lm("llama", tok, **SMALL)
    reward = tiny_sequence_classifier("llama", tok, seed=1, **SMALL)
    t = PPOTrainer(args=cfg(tmp_path, bf16=True, max_steps=1), processing_class=tok, model=policy,
                   reward_model=reward, train_dataset=prompts)
    for frozen in (t.ref_model, t.reward_sources[0].model):
        assert frozen.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
        assert frozen.model.embed_tokens.weight.dtype == torch.float32
    assert t.model.policy.model.layers[0].mlp.up_proj.weight.dtype == torch.float32  # trained weights untouched
    t.train()
    b = t._last_rollout
    assert torch.equal(b["logprobs"], b["ref_logprobs"])

    kept = PPOTrainer(args=cfg(tmp_path / "kept", bf16=True, max_steps=1, frozen_models_in_compute_dtype=False),
                      processing_class=tok, model=tiny_causal_lm("llama", tok, **SMALL),
                      reward_model=tiny_sequence_classifier("llama", tok, seed=1, **SMALL), train_dataset=prompts)
    assert kept.ref_model.model.layers[0].mlp.up_proj.weight.dtype == torch.float32


def test_cpu_bf16_switches_to_eager_attention_unless_told_not_to(tmp_path, tok, prompts):
    def attn(t):
        return t.model.policy.config._attn_implementation

    model = tiny_causal_lm("llama", tok, **SMALL)
    assert model.config._attn_implementation == "sdpa"
    t = PPOTrainer(args=cfg(tmp_path, bf16=True), processing_class=tok, model=model, reward_model=gold_reward,
                   train_dataset=prompts)
    # cpu_bf16_padding_free (a default): our eager attention that runs packed rows
    assert attn(t) == PADDING_FREE and t.ref_model.config._attn_implementation == PADDING_FREE
    t = PPOTrainer(args=cfg(tmp_path, bf16=True, cpu_bf16_padding_free=False), processing_class=tok,
                   model=tiny_causal_lm("llama", tok, **SMALL), reward_model=gold_reward, train_dataset=prompts)
    assert attn(t) == "eager" and t.ref_model.config._attn_implementation == "eager"  # no key/value groups here
    t = PPOTrainer(args=cfg(tmp_path, bf16=True, cpu_bf16_eager_attention=False), processing_class=tok,
                   model=tiny_causal_lm("llama", tok, **SMALL), reward_model=gold_reward, train_dataset=prompts)
    assert attn(t) == "sdpa"
    t = PPOTrainer(args=cfg(tmp_path), processing_class=tok, model=tiny_causal_lm("llama", tok, **SMALL),
                   reward_model=gold_reward, train_dataset=prompts)
    assert attn(t) == "sdpa"  # fp32: SDPA stays


class NoLogitsToKeep(LlamaForCausalLM):
    """A causal LM whose forward does not take `logits_to_keep` (as some custom models)."""

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None,
                **kwargs):
        kwargs.pop("logits_to_keep", None)  # generation passes it; our trainer must not rely on it
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               past_key_values=past_key_values, use_cache=use_cache, **kwargs)


def test_logits_to_keep_is_passed_only_to_models_that_take_it(tok):
    model = tiny_causal_lm("llama", tok, **SMALL)
    assert accepts_logits_to_keep(model) and logits_kwargs(model, 5) == {"logits_to_keep": 5}
    assert logits_kwargs(model, 0) == {}
    torch.manual_seed(0)
    custom = NoLogitsToKeep(tiny_config("llama", tok, **SMALL))
    assert not accepts_logits_to_keep(custom) and logits_kwargs(custom, 5) == {}


@pytest.mark.parametrize("model_cls", ["llama", "custom"])
def test_rollout_logprobs_with_logits_to_keep_equal_full_forward(tmp_path, tok, prompts, model_cls):
    torch.manual_seed(0)
    model = tiny_causal_lm("llama", tok, **SMALL) if model_cls == "llama" else \
        NoLogitsToKeep(tiny_config("llama", tok, **SMALL))
    # learning rate 0: the policy after train() is the one that produced the rollout's log-probs
    t = PPOTrainer(args=cfg(tmp_path, max_steps=1, learning_rate=0.0), processing_class=tok, model=model,
                   reward_model=gold_reward, train_dataset=prompts)
    t.train()
    b = t._last_rollout
    c = b["context_length"]
    policy = t.model.policy.eval()
    with torch.no_grad():
        mask = b["query_response_mask"]
        full = policy(input_ids=b["query_responses"], attention_mask=mask,
                      position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits[:, c - 1:-1]
    expected = torch.log_softmax(full / (1.0 + 1e-7), -1).gather(-1, b["responses"][..., None])[..., 0]
    expected = expected * b["response_mask"]
    assert torch.allclose(b["logprobs"], expected, atol=1e-5)


def test_entropy_is_computed_only_for_logged_steps(tmp_path, tok, prompts, monkeypatch):
    calls = []
    real = trainer_module.entropy_from_logits
    monkeypatch.setattr(trainer_module, "entropy_from_logits", lambda x: calls.append(1) or real(x))

    def run(out, **kw):
        calls.clear()
        t = PPOTrainer(args=cfg(tmp_path / out, **kw), processing_class=tok,
                       model=tiny_causal_lm("llama", tok, **SMALL), reward_model=gold_reward, train_dataset=prompts)
        t.train()
        return t, len(calls)

    # 2 rollouts × 2 optimizer steps (one micro-batch each): 2 rollout passes + 4 training passes when every step logs
    t, logged = run("every", logging_steps=1, max_steps=4)
    assert logged == 6 and "policy/entropy_avg" in t.state.log_history[0]
    assert "objective/token_entropy" in t.state.log_history[0]
    # only the last step (4) logs: the second rollout's pass and step 4's
    t, rarely = run("rarely", logging_steps=100, max_steps=4)
    assert rarely == 2
    assert "policy/entropy_avg" in t.state.log_history[0] and t.state.log_history[0]["step"] == 4


def test_chunked_cross_entropy_hand_computed_and_against_torch():
    # one row, two positions, vocabulary 2: logits (0, 0) -> log 2; (ln 3, 0) with label 0 -> log(4/3); one ignored
    logits = torch.tensor([[[0.0, 0.0], [float(torch.log(torch.tensor(3.0))), 0.0], [5.0, 1.0]]])
    labels = torch.tensor([[1, 0, -100]])
    expected = (torch.log(torch.tensor(2.0)) + torch.log(torch.tensor(4.0 / 3.0))) / 2
    for chunk in (1, 2, 3):
        assert torch.allclose(chunked_cross_entropy(logits, labels, chunk), expected, atol=1e-6)
    g = torch.Generator().manual_seed(0)
    big = torch.randn(3, 17, 11, generator=g).to(torch.bfloat16)
    lab = torch.randint(0, 11, (3, 17), generator=g)
    lab[0, :4] = -100
    ref = nn.functional.cross_entropy(big.float().reshape(-1, 11), lab.reshape(-1), ignore_index=-100)
    assert torch.allclose(chunked_cross_entropy(big, lab, 5), ref, atol=1e-6)


# ---------------------------------------------------------------- value head on the policy's own trunk
class ValuesAlone(PPOHook):
    """At the first rollout (before any update), the value model called on its own, for comparison."""

    def __init__(self):
        self.alone, self.running = None, False

    def on_rollout(self, batch, trainer):
        if self.alone is None:
            self.running = True
            mask = batch["query_response_mask"]
            with torch.no_grad(), trainer.accelerator.autocast():
                v = trainer.model.value_model(batch["query_responses"], mask, (mask.cumsum(1) - 1).clamp(min=0))
            c = batch["context_length"]
            self.alone = (v[:, c - 1:-1] * batch["response_mask"], batch["values"].clone())
            self.running = False
        return batch


@pytest.mark.parametrize("peft", [False, True])
def test_value_head_on_policy_one_forward_gives_logits_and_values(tmp_path, tok, prompts, peft):
    from peft import LoraConfig

    model = tiny_causal_lm("llama", tok, **SMALL)
    hook = ValuesAlone()
    t = PPOTrainer(args=cfg(tmp_path, value_head_on_policy=True, value_head_init_std=0.1, max_steps=1),
                   processing_class=tok, model=model, reward_model=gold_reward, train_dataset=prompts, plugins=[hook],
                   peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                          task_type="CAUSAL_LM") if peft else None)
    w = t.model
    assert w.value_model.shared and w.value_model.body() is None
    assert "value" not in getattr(w.policy, "peft_config", {})  # no value adapter, no value backbone
    body = w.policy.get_base_model().model if peft else w.policy.model
    lengths = []

    def count(mod, args, kw, out):
        if not hook.running:
            lengths.append(out.last_hidden_state.shape[1])

    body.register_forward_hook(count, with_kwargs=True)
    t.train()
    b = t._last_rollout
    # full-sequence forwards of the policy's body (not generation's): one for policy + values in the training step
    # (the rollout reuses it: one micro-batch per rollout) and under PEFT the reference's (adapters off, same body);
    # no value forward anywhere
    assert lengths.count(b["query_responses"].shape[1]) == 1 + peft
    # the rollout's values are the head on the policy's last hidden state (the value model run on its own)
    alone, rollout_values = hook.alone
    assert not torch.equal(rollout_values, torch.zeros_like(rollout_values))
    assert torch.allclose(rollout_values, alone, atol=1e-6)


def test_value_head_on_policy_warmup_trains_the_head_only(tmp_path, tok, prompts):
    model = tiny_causal_lm("llama", tok, **SMALL)
    def one(prompts, completions, **kw):  # non-zero returns, so that the value loss has a gradient
        return [1.0] * len(prompts)

    t = PPOTrainer(args=cfg(tmp_path, value_head_on_policy=True, value_warmup_steps=2, max_steps=2),
                   processing_class=tok, model=model, reward_model=one, train_dataset=prompts)
    policy_before = {n: p.detach().clone() for n, p in t.model.policy.named_parameters()}
    head_before = t.model.value_model.head.weight.detach().clone()
    t.train()
    assert all(torch.equal(p, policy_before[n]) for n, p in t.model.policy.named_parameters())
    assert not torch.equal(t.model.value_model.head.weight, head_before)


def test_value_head_on_policy_saves_no_value_body_and_reloads(tmp_path, tok, prompts):
    from icegrt_trl.ppo.checkpoints import load_trained

    t = PPOTrainer(args=cfg(tmp_path, value_head_on_policy=True, value_head_init_std=0.1, max_steps=1),
                   processing_class=tok, model=tiny_causal_lm("llama", tok, **SMALL), reward_model=gold_reward,
                   train_dataset=prompts)
    t.train()
    t.save_model(str(tmp_path / "out"))
    assert not (tmp_path / "out" / "value_model").exists()
    policy, value, _ = load_trained(tmp_path / "out")
    ids = torch.tensor([[3, 5, 7, 9, 11]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        expected = t.model.value_model.eval()(ids, mask)
        assert torch.allclose(value(ids, mask), expected, atol=1e-6)


def test_value_head_on_policy_refuses_a_value_model(tmp_path, tok, prompts):
    with pytest.raises(ValueError, match=r"value_head_on_policy=True puts the value head on the policy's own trunk; "
                                         r"do not pass a `value_model` as well"):
        PPOTrainer(args=cfg(tmp_path, value_head_on_policy=True), processing_class=tok,
                   model=tiny_causal_lm("llama", tok, **SMALL), reward_model=gold_reward, train_dataset=prompts,
                   value_model=tiny_sequence_classifier("llama", tok, **SMALL))


def test_generation_in_length_buckets_keeps_each_rows_response(tmp_path, tok, prompts):
    t = PPOTrainer(args=cfg(tmp_path, per_device_train_batch_size=8, local_rollout_forward_batch_size=3),
                   processing_class=tok, model=tiny_causal_lm("llama", tok, **SMALL), reward_model=gold_reward,
                   train_dataset=prompts)
    rows = [t.train_dataset[i] for i in range(8)]
    assert len({len(r["input_ids"]) for r in rows}) > 1  # prompts of several lengths
    policy = t.model.policy
    seen, real_generate = [], policy.generate

    def recording_generate(**kw):
        seen.append(kw["attention_mask"].clone())
        return real_generate(**kw)

    policy.generate = recording_generate
    batch = t._greedy_rollout(rows)
    del policy.generate
    assert len(seen) == 3  # ceil(8 / 3) chunks
    for mask in seen:
        assert mask[:, 0].any()  # no column that is padding for every row of the chunk
        lengths = mask.sum(1)
        assert torch.equal(lengths, lengths.sort(descending=True).values)  # similar lengths together
    with torch.no_grad():  # each row's response is the one its own prompt gets alone
        for r, response, n in zip(rows, batch["responses"], batch["response_mask"].sum(1)):
            ids = torch.tensor([r["input_ids"]])
            alone = real_generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                  generation_config=t.greedy_generation_config)[0, ids.shape[1]:]
            assert response[:int(n)].tolist() == alone[:int(n)].tolist()


def test_rollout_is_as_wide_as_its_longest_response(tmp_path, tok, prompts):
    model = tiny_causal_lm("llama", tok, **SMALL)
    head = nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
    with torch.no_grad():  # EOS made likely: every row stops well before response_length
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[tok.eos_token_id] = 4.0
    model.lm_head = head
    t = PPOTrainer(args=cfg(tmp_path, response_length=20, max_steps=1, per_device_train_batch_size=8),
                   processing_class=tok, model=model, reward_model=gold_reward, train_dataset=prompts)
    t.train()
    b = t._last_rollout
    ends = [(row == tok.eos_token_id).nonzero()[0, 0].item() + 1 for row in b["responses"]]  # every row has an EOS
    assert b["responses"].shape[1] == max(ends) < 20
    assert b["query_responses"].shape[1] == b["context_length"] + max(ends)


# ---------------------------------------------------------------- LM head input, merged adapter for generation
def test_lm_head_gets_a_contiguous_input_and_the_same_logits(tok):
    from icegrt_trl.ppo.modeling import contiguous_lm_head_input

    model = tiny_causal_lm("llama", tok, **SMALL).eval()
    seen = []
    spy = model.lm_head.register_forward_pre_hook(lambda m, a: seen.append(a[0].is_contiguous()))
    ids = torch.randint(3, len(tok), (3, 9))
    with torch.no_grad():
        before = model(input_ids=ids, logits_to_keep=4).logits
    assert seen == [False]  # transformers hands the head a strided view of the kept positions
    spy.remove()
    assert contiguous_lm_head_input(model) and not contiguous_lm_head_input(model)  # one hook, however often asked
    model.lm_head.register_forward_pre_hook(lambda m, a: seen.append(a[0].is_contiguous()))  # runs after ours
    with torch.no_grad():
        after = model(input_ids=ids, logits_to_keep=4).logits
    assert seen == [False, True]
    assert torch.allclose(after, before, atol=1e-6)


def test_every_sampling_path_gives_the_lm_head_a_contiguous_input(tok):
    from icegrt_trl.ppo.generation import isolated_generation
    from icegrt_trl.testbed import generate_completions

    sampler, judged = (tiny_causal_lm("llama", tok, **SMALL) for _ in range(2))
    with isolated_generation(sampler):  # the PPO rollout, RLP sampling, preference sampling and the KL estimate
        pass
    generate_completions(judged, tok, ["1 + 2 ="], max_new_tokens=2)  # the gold judge and the eval stage
    assert sampler.lm_head._icegrt_contiguous_input and judged.lm_head._icegrt_contiguous_input


def lora(**kw):
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "gate_proj"], task_type="CAUSAL_LM", **kw)


def test_merged_adapter_computes_the_adapted_model_and_restores_the_exact_base(tok):
    from peft import get_peft_model

    from icegrt_trl.ppo.modeling import _tuner_layers, merged_adapter

    model = get_peft_model(tiny_causal_lm("llama", tok, **SMALL).to(torch.bfloat16), lora(init_lora_weights=False))
    layers = _tuner_layers(model)
    lora_layers = [m for m in layers if "default" in getattr(m, "lora_A", {})]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(3, len(tok), (2, 9))
    with torch.no_grad():
        unmerged = model(input_ids=ids).logits.float()
        with merged_adapter(layers, "default") as n:
            assert n == len(lora_layers) == 2 * 3
            assert all(m.merged for m in lora_layers)
            merged = model(input_ids=ids).logits.float()
    with torch.no_grad(), model.disable_adapter():
        base_only = model(input_ids=ids).logits.float()
    assert (merged - unmerged).abs().max() < 0.1 < (base_only - unmerged).abs().max()  # the adapter, to bf16 rounding
    assert not any(m.merged for m in lora_layers)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # the exact bits, base and adapter
    # PEFT's own merge + unmerge does not give the bf16 base back: why merged_adapter copies the weights
    model.merge_adapter()
    model.unmerge_adapter()
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize("merge", [False, True])
def test_merge_adapter_for_generation_merges_only_while_generating(tmp_path, tok, prompts, merge):
    model = tiny_causal_lm("llama", tok, **SMALL).to(torch.bfloat16)
    t = PPOTrainer(args=cfg(tmp_path, bf16=True, merge_adapter_for_generation=merge, max_steps=2),
                   processing_class=tok, model=model, reward_model=gold_reward, train_dataset=prompts,
                   peft_config=lora())
    policy = t.model.policy
    assert policy.get_base_model().get_output_embeddings()._icegrt_contiguous_input
    frozen = {n: p.detach().clone() for n, p in policy.named_parameters() if not p.requires_grad}
    q_proj = policy.get_base_model().model.layers[0].self_attn.q_proj
    calls, generating = [], []  # calls: (inside generate, merged)
    q_proj.register_forward_pre_hook(lambda m, a: calls.append((bool(generating), m.merged)))
    generate = policy.generate

    def spied_generate(*a, **k):
        generating.append(True)
        try:
            return generate(*a, **k)
        finally:
            generating.pop()

    policy.generate = spied_generate
    t.train()
    assert {merged for inside, merged in calls if inside} == {merge}
    assert {merged for inside, merged in calls if not inside} == {False}  # rollout forwards, reference, training
    assert all(torch.equal(p, frozen[n]) for n, p in policy.named_parameters() if not p.requires_grad)


def test_merge_adapter_for_generation_refuses_what_it_cannot_merge(tmp_path, tok, prompts):
    from transformers import BitsAndBytesConfig

    kw = dict(processing_class=tok, reward_model=gold_reward, train_dataset=prompts)
    with pytest.raises(ValueError, match=r"merge_adapter_for_generation=True needs a PEFT LoRA policy .*"
                                         r"Set merge_adapter_for_generation=False"):
        PPOTrainer(args=cfg(tmp_path, merge_adapter_for_generation=True), model=tiny_causal_lm("llama", tok, **SMALL),
                   **kw)
    tiny_causal_lm("llama", tok, **SMALL).save_pretrained(tmp_path / "tiny")
    q4 = AutoModelForCausalLM.from_pretrained(tmp_path / "tiny", quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32))
    with pytest.raises(ValueError, match=r"cannot merge the LoRA adapter into a 4-bit/8-bit quantized base"):
        PPOTrainer(args=cfg(tmp_path, merge_adapter_for_generation=True), model=q4, peft_config=lora(), **kw)
    t = PPOTrainer(args=cfg(tmp_path), model=tiny_causal_lm("llama", tok, **SMALL), peft_config=lora(), **kw)
    t.is_fsdp_enabled = True  # as Trainer sets it under FSDP
    with pytest.raises(ValueError, match=r"cannot merge into weights sharded across processes"):
        t._check_merge_for_generation(t.model)
    t.is_fsdp_enabled, t.policy_adapter = False, "ia3"  # an adapter without LoRA layers
    with pytest.raises(ValueError, match=r"the policy adapter 'ia3' has no LoRA layers"):
        t._check_merge_for_generation(t.model)


# ---------------------------------------------------------------- the first training forward as the rollout's
@pytest.mark.parametrize("kw, reused", [
    ({}, True),  # one micro-batch holds the rollout
    ({"reuse_first_training_forward": False}, False),
    ({"num_mini_batches": 2, "max_steps": 4}, False),  # the second mini-batch's rows would see moved weights
    ({"gradient_accumulation_steps": 2, "per_device_train_batch_size": 2}, False),  # two micro-batches
    ({"value_warmup_steps": 2}, False),  # warm-up runs no policy forward in training
])
def test_first_training_forward_supplies_the_rollouts_logprobs_and_values_when_it_can(tmp_path, tok, prompts, kw,
                                                                                       reused):
    t = PPOTrainer(args=cfg(tmp_path, **kw), processing_class=tok, model=tiny_causal_lm("llama", tok, **SMALL),
                   reward_model=gold_reward, train_dataset=prompts)
    calls = []
    t.model.value_model.register_forward_hook(lambda *a: calls.append(1))
    t.train()
    assert t._rollouts_done == 1
    micro_steps = t.state.global_step * t.args.gradient_accumulation_steps
    assert len(calls) - micro_steps == (0 if reused else 1)  # the rollout's own value forward, or none


def test_reusing_the_first_training_forward_changes_cost_not_results(tmp_path, tok, prompts):
    runs = {}
    for reuse in (True, False):
        t = PPOTrainer(args=cfg(tmp_path / str(reuse), reuse_first_training_forward=reuse),
                       processing_class=tok, model=tiny_causal_lm("llama", tok, **SMALL), reward_model=gold_reward,
                       train_dataset=prompts)
        t.train()
        runs[reuse] = t
    a, b = runs[True]._last_rollout, runs[False]._last_rollout
    assert torch.equal(a["responses"], b["responses"])  # the same samples
    for key in ("logprobs", "ref_logprobs", "values", "advantages", "returns"):
        assert torch.allclose(a[key], b[key], atol=1e-5), key
    la, lb = (metrics_of(runs[r].state.log_history) for r in (True, False))
    assert la[1]["val/ratio"] == 1.0 and la[1]["policy/approxkl_avg"] == 0.0  # old log-probs = this forward's
    for step in (1, 2):
        for key in ("loss/policy_avg", "loss/value_avg", "objective/kl", "val/ratio"):
            assert la[step][key] == pytest.approx(lb[step][key], rel=1e-3, abs=1e-6), (step, key)


def metrics_of(history):
    return {h["step"]: h for h in history if "loss/value_avg" in h}


def test_resume_inside_a_rollout_made_from_the_first_training_forward(tmp_path, tok, prompts):
    kw = dict(max_steps=4, save_strategy="steps", save_steps=1, reward_scaling="running_meanstd")
    full = PPOTrainer(args=cfg(tmp_path / "a", **kw), processing_class=tok,
                      model=tiny_causal_lm("llama", tok, **SMALL), reward_model=gold_reward, train_dataset=prompts)
    full.train()
    assert full._reuses_first_training_forward()
    resumed = PPOTrainer(args=cfg(tmp_path / "b", **kw), processing_class=tok,
                         model=tiny_causal_lm("llama", tok, **SMALL), reward_model=gold_reward,
                         train_dataset=prompts)
    # checkpoint-1 lies inside the first rollout: its buffer (finished by step 1's forward) comes back; step 3
    # starts a new rollout, again finished by its first training forward
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-1"))
    a, b = metrics_of(full.state.log_history), metrics_of(resumed.state.log_history)
    for step in (2, 3, 4):
        for key in ("loss/policy_avg", "loss/value_avg", "objective/kl", "objective/scores", "val/ratio"):
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-4, abs=1e-6), (step, key)
