"""share_prompt_prefix (icegrt_trl.ppo.prefix): the prompt tokens every row of a forward starts with run once per
model, and the rows attend to them through the KV cache. The same log-probs, values, scores and gradients up to
float rounding, for fewer token positions; off under activation checkpointing, for a model without a KV cache."""

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import BertConfig, BertForSequenceClassification

from icegrt_trl import PPOConfig, PPOTrainer
from icegrt_trl.ppo.modeling import PolicyAndValue, SharedValueHead, ValueModel, new_value_head
from icegrt_trl.ppo.prefix import (
    MIN_SHARED_PREFIX_TOKENS,
    prefix_length_to_share,
    shared_prefix_length,
    split_shared_prefix,
)
from icegrt_trl.ppo.rewards import ModelReward
from icegrt_trl.testbed import ARCHITECTURES, build_tokenizer, make_datasets, tiny_causal_lm, tiny_sequence_classifier

SMALL = dict(hidden_size=32, num_layers=2, num_heads=2)
# 12 tokens of the testbed vocabulary in front of every prompt: a system turn, as a chat template writes one
SYSTEM = "<|system|> please answer the digits ok , I know the answer <|user|> "


# ---------------------------------------------------------------- 1. the pure functions, by hand
def test_shared_prefix_length_of_left_and_right_padded_rows():
    left = torch.tensor([[0, 0, 5, 6, 7, 8], [0, 5, 6, 7, 9, 9], [5, 6, 7, 8, 8, 8]])
    assert shared_prefix_length(left, (left != 0).long(), 10) == 3
    assert shared_prefix_length(left, (left != 0).long(), 2) == 2
    right = torch.tensor([[5, 6, 7, 8, 0, 0], [5, 6, 9, 0, 0, 0]])
    assert shared_prefix_length(right, (right != 0).long(), 10) == 2
    whole = torch.tensor([[0, 5, 6], [5, 6, 7]])  # the first row is all prefix: bounded by its 2 real tokens
    assert shared_prefix_length(whole, (whole != 0).long(), 10) == 2
    one_row = torch.tensor([[5, 6, 7]])
    assert shared_prefix_length(one_row, torch.ones_like(one_row), 10) == 0
    differ = torch.tensor([[5, 6], [6, 6]])
    assert shared_prefix_length(differ, torch.ones_like(differ), 10) == 0


def test_split_keeps_left_padding_in_front_and_continues_the_positions():
    ids = torch.tensor([[0, 0, 5, 6, 7, 8, 1, 2],
                        [0, 5, 6, 7, 9, 9, 3, 4]])
    s = split_shared_prefix(ids, (ids != 0).long(), 3)
    assert s.prefix_ids.tolist() == [[5, 6, 7]]
    assert s.rest_ids.tolist() == [[0, 0, 8, 1, 2], [0, 9, 9, 3, 4]]
    assert s.rest_mask.tolist() == [[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]]
    assert s.attention_mask.tolist() == [[1, 1, 1, 0, 0, 1, 1, 1], [1, 1, 1, 0, 1, 1, 1, 1]]
    # the rows' real tokens sit at positions 0..5 and 0..6 in the plain forward: 8 at 3; 9, 9, 3, 4 at 3..6
    assert s.position_ids[0, 2:].tolist() == [3, 4, 5]
    assert s.position_ids[1, 1:].tolist() == [3, 4, 5, 6]


def test_the_shared_prefix_stops_before_each_prompts_last_token_and_needs_a_minimum():
    n = MIN_SHARED_PREFIX_TOKENS + 2
    head = list(range(10, 10 + n))
    # row 0's prompt is the shared head alone: its last token's logits predict the first response token
    prompts = [head, head + [40, 41]]
    width = n + 2
    ids = torch.tensor([[0] * (width - len(p)) + p + [1, 2] for p in prompts])
    mask = (ids != 0).long()
    assert prefix_length_to_share(ids, mask, prompt_columns=width) == n - 1
    short = [head[:MIN_SHARED_PREFIX_TOKENS - 1] + [50], head[:MIN_SHARED_PREFIX_TOKENS - 1] + [60]]
    ids = torch.tensor([p + [1] for p in short])
    assert prefix_length_to_share(ids, torch.ones_like(ids), prompt_columns=len(short[0])) == 0


# ---------------------------------------------------------------- 2. the same outputs, fewer positions
def _rows(tok, n_rows=4, response=5, seed=0):
    """Left-padded prompts that start with SYSTEM, followed by response tokens (right-padded in one row)."""
    g = torch.Generator().manual_seed(seed)
    head = tok(SYSTEM, add_special_tokens=False)["input_ids"]
    vocab = [i for i in range(len(tok)) if i not in tok.all_special_ids]
    rows = []
    for i in range(n_rows):
        tail = [vocab[int(j)] for j in torch.randint(len(vocab), (2 + 2 * i,), generator=g)]
        resp = [vocab[int(j)] for j in torch.randint(len(vocab), (response,), generator=g)]
        rows.append((head + tail, resp))
    width = max(len(p) for p, _ in rows)
    pad = tok.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p + r for p, r in rows])
    mask = (ids != pad).long()
    mask[0, -2:] = 0  # a response that stopped early
    ids[0, -2:] = pad
    return ids, mask, width, len(head)


class CountPositions:
    """Token positions through a model's input embeddings (forward pre-hook); ``training``: only in forwards that
    build a graph (not generation, not the rollout's no-grad forwards)."""

    def __init__(self, model, training: bool = False):
        self.n, self.training = 0, training
        model.get_input_embeddings().register_forward_pre_hook(self)

    def __call__(self, module, args):
        if not self.training or torch.is_grad_enabled():
            self.n += args[0].numel()


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("value", ["separate", "on_policy", "separate_checkpointed"])
def test_policy_and_value_outputs_and_gradients_match_the_plain_forward(arch, value):
    tok = build_tokenizer()
    policy = tiny_causal_lm(arch, tok, seed=0, **SMALL)
    if value.startswith("separate"):
        critic = ValueModel.from_model(tiny_sequence_classifier(arch, tok, seed=1, **SMALL), init_std=0.1)
    else:
        torch.manual_seed(1)
        critic = SharedValueHead(policy, new_value_head(SMALL["hidden_size"], init_std=0.1))
    wrapper = PolicyAndValue(policy, critic).train()
    ids, mask, width, head = _rows(tok)
    keep = ids.shape[1] - width + 1
    counts = CountPositions(policy)

    def run(prefix_length):
        wrapper.zero_grad(set_to_none=True)
        counts.n = 0
        if value.endswith("checkpointed") and prefix_length:  # compared with the plain forward unchecked
            wrapper.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        logits, values = wrapper(ids, mask, logits_to_keep=keep, prefix_length=prefix_length)
        logits, values = logits[:, -keep:], values[:, -keep:]
        (logits.logsumexp(-1).sum() + values.sum()).backward()
        grads = {n: p.grad.clone() for n, p in wrapper.named_parameters() if p.grad is not None}
        return logits.detach(), values.detach(), grads, counts.n

    plain = run(0)
    shared = prefix_length_to_share(ids, mask, width)
    assert shared == head  # the testbed's tokens after SYSTEM differ from row to row
    split = run(shared)
    torch.testing.assert_close(split[0], plain[0], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(split[1], plain[1], atol=2e-5, rtol=1e-5)
    assert split[2].keys() == plain[2].keys()
    for n in plain[2]:
        torch.testing.assert_close(split[2][n], plain[2][n], atol=2e-5, rtol=1e-4, msg=n)
    rows, cols = ids.shape
    assert plain[3] == rows * cols
    assert split[3] == shared + rows * (cols - shared)  # the policy ran the prefix once, not once per row


def test_reward_scores_match_and_an_encoder_reward_model_runs_its_plain_forward():
    tok = build_tokenizer()
    ids, mask, _, head = _rows(tok, n_rows=5)
    batch = {"query_responses": ids, "query_response_mask": mask, "prompts": ["x"] * 5, "scores_device": "cpu"}
    decoder = tiny_sequence_classifier("llama", tok, seed=3, **SMALL)
    decoder.config.pad_token_id = tok.pad_token_id
    counts = CountPositions(decoder)
    source = ModelReward(decoder, tok)
    plain = source(batch)
    plain_positions, counts.n = counts.n, 0
    source.share_prompt_prefix = True
    shared = source(batch)
    torch.testing.assert_close(shared, plain, atol=2e-5, rtol=1e-5)
    assert plain_positions == ids.numel()
    assert counts.n == head + 5 * (ids.shape[1] - head)

    torch.manual_seed(0)
    encoder = BertForSequenceClassification(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                                                       num_attention_heads=2, intermediate_size=64, num_labels=1,
                                                       pad_token_id=tok.pad_token_id))
    source = ModelReward(encoder, tok)
    plain = source(batch)
    source.share_prompt_prefix = True
    torch.testing.assert_close(source(batch), plain, atol=0, rtol=0)  # bit-equal: the plain forward ran
    assert getattr(encoder, "_icegrt_no_kv_cache", False)  # and the model is not asked for a cache again


# ---------------------------------------------------------------- 3. in the trainer
@pytest.fixture(scope="module")
def system_prompts():
    rows = make_datasets(num_sft=10, num_preferences=10, num_pmp=10, num_pref_eval=10, num_unlabeled=32,
                         num_eval=8)["unlabeled"]
    return Dataset.from_dict({"prompt": [SYSTEM + p for p in rows["prompt"]]})


def length_reward(prompts, completions, **kw):
    return [float(len(c)) for c in completions]


def _train(tmp_path, prompts, share, peft=None, **kw):
    tok = build_tokenizer()
    model = tiny_causal_lm("llama", tok, **SMALL)
    args = PPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], per_device_train_batch_size=8,
                     num_mini_batches=1, num_ppo_epochs=2, max_steps=2, response_length=6, save_strategy="no",
                     disable_tqdm=True, num_sample_generations=0, learning_rate=3e-3, logging_steps=1, seed=0,
                     share_prompt_prefix=share, **kw)
    t = PPOTrainer(args=args, processing_class=tok, model=model, reward_model=length_reward, train_dataset=prompts,
                   peft_config=peft)
    counts = CountPositions(t._unwrapped().policy, training=True)
    t.train()
    return t, counts.n


@pytest.mark.parametrize("variant", ["fp32", "bf16", "lora_bf16"])
def test_step0_kl_is_exactly_zero_and_the_policy_runs_fewer_positions(tmp_path, system_prompts, variant):
    bf16 = variant != "fp32"
    peft = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM") \
        if variant == "lora_bf16" else None
    runs = {share: _train(tmp_path / str(share), system_prompts, share, peft, bf16=bf16,
                          gradient_checkpointing=False) for share in (False, True)}
    for share, (t, _) in runs.items():
        first = t.state.log_history[0]
        assert first["objective/kl"] == 0.0, share
        assert first["val/ratio"] == 1.0, share
    # same seed, same samples: the two runs differ by float rounding only
    (off, off_n), (on, on_n) = runs[False], runs[True]
    torch.testing.assert_close(on._last_rollout["responses"], off._last_rollout["responses"])
    for key in ("logprobs", "values", "advantages"):
        torch.testing.assert_close(on._last_rollout[key], off._last_rollout[key], atol=2e-2 if bf16 else 1e-4,
                                   rtol=0, msg=key)
    # the training forwards (2 epochs over the one rollout's 8 rows) ran the shared head once instead of 8 times
    qr = off._last_rollout["query_responses"]
    head = len(build_tokenizer()(SYSTEM)["input_ids"])  # SYSTEM, with the BOS the tokenizer adds
    assert prefix_length_to_share(qr, off._last_rollout["query_response_mask"],
                                  off._last_rollout["context_length"]) == head
    passes = 2 * (2 if peft else 1)  # under LoRA the value adapter runs on the policy's base too
    positions = qr.numel()
    if bf16:  # cpu_bf16_padding_free (a default): each row from its first real token, packed
        mask = off._last_rollout["query_response_mask"]
        positions = int((mask.shape[1] - mask.ne(0).int().argmax(1)).sum())
        assert positions < qr.numel()
    assert off_n == passes * positions
    assert on_n == passes * (head + positions - qr.shape[0] * head)


def _trained_weights(t):
    return {n: p.detach().clone() for n, p in t.model.named_parameters() if p.requires_grad}


def test_under_activation_checkpointing_the_prefix_is_shared_and_the_updates_match(tmp_path, system_prompts):
    """PPOConfig's default (non-reentrant) checkpointing: transformers' checkpointed layers would drop the cache;
    the prefix is run unchecked and read from a cache the replay cannot extend."""
    ckpt, n = _train(tmp_path / "ckpt", system_prompts, True, gradient_checkpointing=True)
    plain, plain_n = _train(tmp_path / "plain", system_prompts, True, gradient_checkpointing=False)
    _, unshared_n = _train(tmp_path / "unshared", system_prompts, False, gradient_checkpointing=True)
    assert ckpt.state.log_history[0]["objective/kl"] == 0.0
    assert n == plain_n < 0.7 * unshared_n
    a, b = _trained_weights(ckpt), _trained_weights(plain)
    for name in b:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=0, msg=name)


def test_reentrant_checkpointing_runs_every_position(tmp_path, system_prompts):
    """Reentrant checkpointing gives no gradient to what a layer reads from its keyword arguments (the prefix's
    keys and values): the prefix is not shared then."""
    kw = dict(gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": True})
    t, n = _train(tmp_path / "reentrant", system_prompts, True, **kw)
    _, unshared_n = _train(tmp_path / "unshared", system_prompts, False, **kw)
    assert t.state.log_history[0]["objective/kl"] == 0.0
    assert n == unshared_n
