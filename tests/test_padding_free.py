"""Padding-free forwards (icegrt_trl.ppo.padding_free, PPOConfig.cpu_bf16_padding_free): the rows' real tokens run
packed as one sequence, with the padded forward's outputs."""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, Gemma2Config, MistralConfig, Qwen2Config

from icegrt_trl import PPOConfig, PPOTrainer
from icegrt_trl.ppo.grouped_attention import IMPLEMENTATION, PADDING_FREE, eager_implementation_for, register
from icegrt_trl.ppo.modeling import model_output, position_ids_from, runs_padding_free
from icegrt_trl.ppo.padding_free import packed_rows
from icegrt_trl.ppo.prefix import split_shared_prefix
from icegrt_trl.testbed import build_tokenizer, gold_reward, make_datasets, tiny_config
from test_grouped_attention import DIMS, gqa_config
from test_ppo_speed_options import NoLogitsToKeep

PREFIX = 5


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def config_of(arch: str, tok):
    """test_grouped_attention's grouped-query config; Mistral without a sliding window (padding-free packs none)."""
    return gqa_config(arch, tok, **({"sliding_window": None} if arch == "mistral" else {}))


def padded_and_packed(config, seed=0):
    """The same weights with the padded grouped attention and with the padding-free one (own config objects)."""
    torch.manual_seed(seed)
    padded = AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation="eager")
    torch.manual_seed(seed)
    packed = AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation="eager")
    padded.set_attn_implementation(register())  # also for one key head per query head: the same computation
    packed.set_attn_implementation(eager_implementation_for(config, padding_free=True))
    assert runs_padding_free(packed) and not runs_padding_free(padded)
    return padded, packed


def rollout_like(tok, rows=4, width=16, seed=0):
    """Left-padded rows (0, 2, 4, 6 padding columns) that start with the same PREFIX tokens, the last row with a
    masked response tail (after an EOS), as a rollout gives them."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, len(tok), (rows, width), generator=g)
    mask = torch.ones_like(ids)
    shared = torch.randint(3, len(tok), (PREFIX,), generator=g)
    for i in range(rows):
        mask[i, :2 * i] = 0
        ids[i, :2 * i] = tok.pad_token_id
        ids[i, 2 * i:2 * i + PREFIX] = shared
    mask[-1, -2:] = 0
    return ids, mask


def kept(mask: torch.Tensor) -> torch.Tensor:
    """Each row from its first real token: the positions a padding-free forward computes."""
    return torch.arange(mask.shape[1])[None] >= mask.ne(0).int().argmax(1)[:, None]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "mistral"])
def test_padding_free_forward_gives_the_padded_outputs(arch, tok):
    padded, packed = padded_and_packed(config_of(arch, tok))
    ids, mask = rollout_like(tok)
    pos = position_ids_from(mask)
    with torch.no_grad():
        for split in (None, split_shared_prefix(ids, mask, PREFIX)):
            rest_mask = mask if split is None else split.rest_mask
            for autocast in (False, True):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    # the last 4 positions (every row has at least 4 real ones after the prefix)
                    a = model_output(padded, ids, mask, pos, split, 4).logits
                    b = model_output(packed, ids, mask, pos, split, 4).logits
                    assert a.shape == b.shape == (4, 4, len(tok)) and torch.equal(a, b)
                    h_a = model_output(padded.model, ids, mask, pos, split).last_hidden_state
                    h_b = model_output(packed.model, ids, mask, pos, split).last_hidden_state
                    assert h_a.shape == h_b.shape
                    assert torch.equal(h_a[kept(rest_mask)], h_b[kept(rest_mask)])
                    assert not h_b[~kept(rest_mask)].any()  # padding comes back as zeros
                    # every layer's hidden states (value_head_on_policy reads the last one) come back unpacked
                    hs_a = model_output(padded, ids, mask, pos, split, 4, output_hidden_states=True).hidden_states
                    hs_b = model_output(packed, ids, mask, pos, split, 4, output_hidden_states=True).hidden_states
                    assert len(hs_a) == len(hs_b) == 3
                    for x, y in zip(hs_a, hs_b):
                        assert torch.equal(x[kept(rest_mask)], y[kept(rest_mask)])


def test_padding_free_linear_layers_see_only_the_real_tokens(tok):
    """The option's effect: every projection runs on the rows' real tokens, not on their padding."""
    _, packed = padded_and_packed(config_of("qwen2", tok))
    ids, mask = rollout_like(tok)
    seen = []
    packed.model.layers[0].mlp.down_proj.register_forward_hook(lambda m, a, out: seen.append(a[0].shape[:2]))
    with torch.no_grad():
        model_output(packed, ids, mask, position_ids_from(mask), None, 4)
        model_output(packed, ids, mask, position_ids_from(mask), split_shared_prefix(ids, mask, PREFIX), 4)
    real = int(kept(mask).sum())
    assert real == 4 * 16 - (0 + 2 + 4 + 6)
    # without the prefix: one packed row; with it: the prefix once, then the rows' rest packed
    assert seen == [(1, real), (1, PREFIX), (1, real - 4 * PREFIX)]


@pytest.mark.parametrize("reentrant", [False, True])
def test_padding_free_gradients_match_the_padded_forwards_under_checkpointing_and_lora(tok, reentrant):
    config = config_of("llama", tok)
    padded, packed = padded_and_packed(config)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    models = []
    for m in (padded, packed):
        m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        m.enable_input_require_grads()  # reentrant checkpointing passes gradients only to inputs that require them
        torch.manual_seed(1)
        models.append(get_peft_model(m, copy.deepcopy(lora)).train())
    ids, mask = rollout_like(tok)
    pos = position_ids_from(mask)
    # reentrant checkpointing gives a prefix cache no gradient: the trainer splits no prefix then
    split = None if reentrant else split_shared_prefix(ids, mask, PREFIX)
    grads = []
    for m in models:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model_output(m, ids, mask, pos, split, 4).logits
        logits.float().log_softmax(-1)[..., 7].sum().backward()
        grads.append({n: p.grad for n, p in m.named_parameters() if p.requires_grad})
    assert len(grads[0]) == 2 * 3 * 2  # lora_A and lora_B of 3 modules in 2 layers
    for n, g in grads[0].items():
        assert g.abs().sum() > 0
        torch.testing.assert_close(grads[1][n], g, rtol=1e-5, atol=1e-6)


def test_packed_rows_index_maps(tok):
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0], [0, 1, 1, 1]])
    rows = packed_rows(mask)
    # row 0 from column 2, row 1 whole (its masked tail too), row 2 from column 1
    assert rows.token_slots.tolist() == [2, 3, 4, 5, 6, 7, 9, 10, 11]
    assert rows.last_positions(2).tolist() == [0, 1, 4, 5, 7, 8]
    x = torch.arange(12).view(3, 4)
    assert rows.pack(x).tolist() == [[2, 3, 4, 5, 6, 7, 9, 10, 11]]
    assert rows.unpack(rows.pack(x)[..., None].float())[..., 0].tolist() == [[0, 0, 2, 3], [4, 5, 6, 7],
                                                                             [0, 9, 10, 11]]
    allowed = rows.additive_mask(torch.float32)[:, 0] == 0
    assert allowed[1].tolist() == [[True, False, False, False], [True, True, False, False],
                                   [True, True, True, False], [True, True, True, False]]  # masked tail key
    assert allowed[0, 3].tolist() == [False, False, True, True]


def test_padding_free_only_for_listed_decoders_without_a_sliding_window(tok):
    assert eager_implementation_for(config_of("llama", tok), padding_free=True) == PADDING_FREE
    # one key head per query head: nothing for grouping to save, but padding-free still pays
    mha = tiny_config("llama", tok, num_heads=4)
    assert eager_implementation_for(mha) == "eager"
    assert eager_implementation_for(mha, padding_free=True) == PADDING_FREE
    windowed = MistralConfig(vocab_size=len(tok), sliding_window=8, **DIMS)
    assert eager_implementation_for(windowed, padding_free=True) == IMPLEMENTATION
    qwen_windowed = Qwen2Config(vocab_size=len(tok), use_sliding_window=True, sliding_window=8, max_window_layers=1,
                                **DIMS)
    assert eager_implementation_for(qwen_windowed, padding_free=True) == IMPLEMENTATION
    assert eager_implementation_for(Gemma2Config(vocab_size=len(tok), **DIMS), padding_free=True) == "eager"


def trainer_run(tmp_path, tok, padding_free: bool, **overrides):
    prompts = make_datasets(num_sft=4, num_preferences=4, num_pmp=4, num_pref_eval=4, num_unlabeled=8,
                            num_eval=4)["unlabeled"]
    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_config(config_of("qwen2", tok))
    args = PPOConfig(output_dir=str(tmp_path / str(padding_free)), use_cpu=True, bf16=True, report_to=[],
                     per_device_train_batch_size=4, num_mini_batches=1, num_ppo_epochs=1, max_steps=1,
                     response_length=5, save_strategy="no", disable_tqdm=True, num_sample_generations=0,
                     stop_token="eos", seed=0, cpu_bf16_padding_free=padding_free, **overrides)
    t = PPOTrainer(args=args, processing_class=tok, model=policy, reward_model=gold_reward, train_dataset=prompts)
    t.train()
    return t


def test_cpu_bf16_trainer_runs_padding_free_by_default_with_the_padded_runs_numbers(tmp_path, tok):
    assert PPOConfig(output_dir=str(tmp_path), use_cpu=True).cpu_bf16_padding_free is True
    on, off = trainer_run(tmp_path, tok, True), trainer_run(tmp_path, tok, False)
    for model in (on.model.policy, on.model.value_model.body(), on.ref_model):
        assert model.config._attn_implementation == PADDING_FREE  # generation's SDPA switched back
    assert off.model.policy.config._attn_implementation == IMPLEMENTATION
    a, b = on._last_rollout, off._last_rollout
    assert torch.equal(a["logprobs"], a["ref_logprobs"])  # step-0 KL exactly 0
    assert torch.equal(a["query_responses"], b["query_responses"])  # the same samples
    assert a["query_response_mask"].eq(0).any()  # there was padding to leave out
    torch.testing.assert_close(a["logprobs"], b["logprobs"], rtol=0, atol=1e-5)
    torch.testing.assert_close(a["values"], b["values"], rtol=0, atol=1e-5)
    # one update: the same weights, up to float rounding
    for (n, p), q in zip(on.model.named_parameters(), off.model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-5, msg=n)



def test_padding_free_gives_full_logits_back_in_rows_to_a_model_without_logits_to_keep(tok):
    config = config_of("llama", tok)
    padded, _ = padded_and_packed(config)
    custom = NoLogitsToKeep(copy.deepcopy(config)).eval()
    custom.load_state_dict(padded.state_dict())
    custom.set_attn_implementation(eager_implementation_for(config, padding_free=True))
    ids, mask = rollout_like(tok)
    pos = position_ids_from(mask)
    with torch.no_grad():
        a = model_output(padded, ids, mask, pos, None, 4).logits
        b = model_output(custom, ids, mask, pos, None, 4).logits  # every position's logits, in the padded layout
    assert b.shape == (4, 16, len(tok))
    assert torch.equal(a, b[:, -4:])
