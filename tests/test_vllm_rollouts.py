"""PPO with vLLM rollouts against a real vLLM server on this CPU: SmolLM2-135M-Instruct + LoRA, the user's defaults
(bf16, gradient checkpointing). The server runs from the environment `scripts/make_vllm_env.sh` builds (the
README's test command builds it); the module starts it once and the last test stops it."""

import math

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer

from icegrt_trl import PPOConfig, PPOTrainer
from icegrt_trl.ppo.plugins import PPOHook
from icegrt_trl.ppo.trainer import response_logprobs
from icegrt_trl.ppo.vllm_client import VLLMServerClient
from icegrt_trl.vllm_serve import VLLMServerProcess

QUESTIONS = ["What is 2 plus 3?", "What is 7 minus 4?", "Name a color.", "What is 10 plus 5?",
             "Count to three.", "What is 6 times 2?", "Say hello.", "What is 9 minus 1?"]
# a prompt and a completion (27 tokens) whose log-probs both sides compute
FIXED = ("What is 2 plus 3?", "2 plus 3 is 5. To see it, start at 2 and count three more: 3, 4, 5. So the sum is 5.")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # no vLLM environment: an error naming scripts/make_vllm_env.sh (the README's test command runs it)
    s = VLLMServerProcess("testbed:smollm2", max_lora_rank=16, log_path=tmp_path_factory.mktemp("vllm") / "log")
    yield s
    s.stop()  # also when a test failed; the last test stops it itself and checks it is gone


@pytest.fixture(scope="module")
def smollm2_dir():
    from icegrt_trl.testbed.smollm2 import smollm2_path

    return smollm2_path()


@pytest.fixture(scope="module")
def smol_tok(smollm2_dir):
    return AutoTokenizer.from_pretrained(smollm2_dir)


def chat_prompts():
    return Dataset.from_dict({"prompt": [[{"role": "user", "content": q}] for q in QUESTIONS]})


def short_answer_reward(prompts, completions, **kw):
    return [-len(c[0]["content"]) / 20.0 for c in completions]


def ppo(tmp_path, server, smollm2_dir, tok, hooks=(), full_weights=False, **kw):
    base = dict(output_dir=str(tmp_path), use_cpu=True, report_to=[], per_device_train_batch_size=4,
                num_ppo_epochs=1, max_steps=3, response_length=12, stop_token="eos", learning_rate=3e-3,
                temperature=1.0, save_strategy="no", disable_tqdm=True, num_sample_generations=0, logging_steps=1,
                seed=0, use_vllm=True, vllm_server_base_url=server.url)
    base.update(kw)
    args = PPOConfig(**base)
    assert args.bf16 and args.gradient_checkpointing  # PPOConfig's defaults, as a user gets them
    # LoRA: a frozen bf16 base; full weights: fp32 master weights, as a user trains them under bf16=True
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32 if full_weights else torch.bfloat16)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    return PPOTrainer(args=args, processing_class=tok, model=model, reward_model=short_answer_reward,
                      train_dataset=chat_prompts(), plugins=list(hooks), peft_config=None if full_weights else lora)


class FixedCompletionLogprobs(PPOHook):
    """At each rollout (the server holds the adapter it sampled with): the fixed completion's log-probs from the
    engine, from the trainer's policy, and from the base model (adapters off)."""

    def __init__(self, tok):
        prompt = tok.apply_chat_template([{"role": "user", "content": FIXED[0]}], add_generation_prompt=True,
                                         tokenize=True, return_dict=True)["input_ids"]
        self.prompt, self.completion = prompt, tok.encode(FIXED[1], add_special_tokens=False)
        self.engine, self.trainer, self.base = [], [], []

    def on_rollout(self, batch, trainer):
        seq = self.prompt + self.completion
        out = trainer.vllm_engine.client._call("POST", "/v1/completions", {
            "model": trainer.vllm_engine.loaded, "prompt": [seq], "max_tokens": 1, "temperature": 1.0,
            "prompt_logprobs": 0})
        by_position = out["choices"][0]["prompt_logprobs"][len(self.prompt):]
        self.engine.append(torch.tensor([d[str(t)]["logprob"] for d, t in zip(by_position, self.completion)]))
        policy = trainer._unwrapped().policy
        ids = torch.tensor([seq])
        with torch.no_grad(), trainer.accelerator.autocast():
            with trainer._unwrapped().policy_scope():
                logits = policy(input_ids=ids).logits[:, len(self.prompt) - 1:-1]
            self.trainer.append(response_logprobs(logits, torch.tensor([self.completion]), 1.0)[0].float())
            if trainer.is_peft:  # the reference is the base, adapters off
                with trainer._ref_scope():
                    logits = policy(input_ids=ids).logits[:, len(self.prompt) - 1:-1]
            else:
                logits = trainer.ref_model(input_ids=ids).logits[:, len(self.prompt) - 1:-1]
            self.base.append(response_logprobs(logits, torch.tensor([self.completion]), 1.0)[0].float())
        return batch


def test_engine_follows_the_trainers_adapter_and_the_run_learns(tmp_path, server, smollm2_dir, smol_tok):
    hook = FixedCompletionLogprobs(smol_tok)
    t = ppo(tmp_path, server, smollm2_dir, smol_tok, hooks=[hook], max_steps=8, per_device_train_batch_size=8,
            response_length=24, learning_rate=1e-2)
    before = t.evaluate(chat_prompts())["eval_objective/scores"]  # greedy answers, sampled by the engine too
    t.train()
    # train() unloaded its adapter: the server lists none, and the adapter folders are gone
    adapters = [m for m in t.vllm_engine.client._call("GET", "/v1/models")["data"] if m.get("parent")]
    assert adapters == [] and not any((tmp_path / "vllm_adapters").iterdir())
    after = t.evaluate(chat_prompts())["eval_objective/scores"]  # loads the trained adapter again, then unloads it
    assert [m for m in t.vllm_engine.client._call("GET", "/v1/models")["data"] if m.get("parent")] == []
    assert len(hook.engine) == 8  # one rollout per update, each sampled from the adapter of that step
    gaps = [(e - tr).abs().mean().item() for e, tr in zip(hook.engine, hook.trainer)]
    moved = [(tr - hook.trainer[0]).abs().mean().item() for tr in hook.trainer]
    engine_off_base = [(e - b).abs().mean().item() for e, b in zip(hook.engine, hook.base)]
    print("engine-trainer gap", gaps, "trainer moved", moved, "engine off base", engine_off_base)
    # the engine computes what the trainer's policy computes, to bf16 noise: two bf16 implementations of one model
    # differ by ~0.04 nats per token at step 0, and by more as the policy sharpens (up to 0.11 seen by step 7, when
    # the trainer had moved 3 nats) ...
    assert gaps[0] < 0.06 and max(gaps) < 0.2, gaps
    # ... while the updates move the log-probs by more than that, and the engine moves with them: token by token,
    # the engine's change since step 0 is the trainer's change. An engine left on an older adapter would be about
    # as far from the trainer as the trainer has moved (gap ≈ moved); half of that separates the two with room for
    # the first update, which moves the log-probs least (0.24-0.41 nats against gaps of 0.04-0.07 seen).
    for k in range(1, 8):
        change = torch.stack([hook.engine[k] - hook.engine[0], hook.trainer[k] - hook.trainer[0]])
        corr = torch.corrcoef(change)[0, 1].item()
        assert gaps[k] < 0.5 * moved[k] and gaps[k] < 0.5 * engine_off_base[k], (k, gaps[k], moved[k],
                                                                                 engine_off_base[k])
        assert corr > 0.9, (k, corr)
    logs = [h for h in t.state.log_history if "loss/policy_avg" in h]
    assert len(logs) == 8
    for h in logs:  # the engine/trainer gap of the rollout's own samples is logged, and small
        assert 0 <= h["vllm/kl"] < 0.02 and abs(h["vllm/is_weight_mean"] - 1) < 0.1
        assert math.isfinite(h["loss/policy_avg"]) and h["val/ratio"] == 1.0
    # the reward (shorter answers) was learned from the engine's samples: the last four rollouts' answers are shorter
    # than the first two's by at least 20 characters on average (33-61 seen; the rollouts of one run swing by up to
    # 2.5), and evaluate() samples greedily from the trained adapter, whose answers are shorter than the base's
    scores = [h["objective/scores"] for h in logs]
    print("scores", scores, "greedy before", before, "after", after)
    assert sum(scores[-4:]) / 4 > sum(scores[:2]) / 2 + 1.0, scores
    assert after > before, (before, after)


def test_importance_weights_multiply_the_advantages(tmp_path, server, smollm2_dir, smol_tok):
    runs = {}
    for correct in (True, False):
        t = ppo(tmp_path / str(correct), server, smollm2_dir, smol_tok, max_steps=1,
                vllm_importance_sampling_correction=correct, vllm_importance_sampling_mode="token_truncate",
                vllm_importance_sampling_clip_max=1.05)
        t.train()
        runs[correct] = t._last_rollout
    a, b = runs[True], runs[False]
    assert torch.equal(a["responses"], b["responses"])  # the same seeded samples from the same step-0 adapter
    mask = a["response_mask"].bool()
    ratio = torch.exp(a["logprobs"] - a["engine_logprobs"]).clamp(max=1.05)
    assert torch.allclose(a["advantages"][mask], (b["advantages"] * ratio)[mask], atol=1e-5)
    assert not torch.allclose(a["advantages"][mask], b["advantages"][mask])


def record_requests(trainer) -> dict:
    """Per optimizer step at which the trainer asked the server for samples: the request's seed, its prompts and a
    digest of the policy adapter the server was given."""
    import hashlib

    seen, sample = {}, trainer.vllm_engine.sample

    def recording(queries, query_mask, *a, **k):
        policy = trainer._unwrapped().policy
        digest = hashlib.sha1(b"".join(p.detach().float().numpy().tobytes() for n, p in
                                       sorted(policy.named_parameters()) if f".{trainer.policy_adapter}." in n))
        seen[trainer.state.global_step] = (k["seed"], queries[query_mask.bool()].tolist(), digest.hexdigest())
        return sample(queries, query_mask, *a, **k)

    trainer.vllm_engine.sample = recording
    return seen


def test_resume_with_vllm_rollouts_continues_the_same_run(tmp_path, server, smollm2_dir, smol_tok):
    kw = dict(max_steps=3, num_ppo_epochs=2, save_strategy="steps", save_steps=1)
    full = ppo(tmp_path / "a", server, smollm2_dir, smol_tok, **kw)
    full_requests = record_requests(full)
    full.train()
    resumed = ppo(tmp_path / "b", server, smollm2_dir, smol_tok, **kw)
    resumed_requests = record_requests(resumed)
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-1"))  # inside the first rollout
    a = {h["step"]: h for h in full.state.log_history if "loss/policy_avg" in h}
    b = {h["step"]: h for h in resumed.state.log_history if "loss/policy_avg" in h}
    # step 2 trains on the half-used rollout saved with checkpoint-1, with the engine's log-probs it was sampled with
    for key in ("loss/policy_avg", "loss/value_avg", "objective/scores", "vllm/kl", "val/ratio"):
        assert b[2][key] == pytest.approx(a[2][key], rel=1e-4, abs=1e-6), key
    # the next rollout asks the server for the same thing: the same seed and prompts, and the restored adapter,
    # bit for bit. (The server's answers then agree to its own numerics: its log-probs differ by ~1e-3 per token
    # between adapter slots, so a long run may sample another token somewhere.)
    assert sorted(full_requests) == [0, 2] and sorted(resumed_requests) == [2]
    assert resumed_requests[2] == full_requests[2]
    assert 3 in b


def test_a_full_weight_policy_is_reloaded_into_the_engine_after_each_update(tmp_path, server, smollm2_dir, smol_tok):
    hook = FixedCompletionLogprobs(smol_tok)
    t = ppo(tmp_path, server, smollm2_dir, smol_tok, hooks=[hook], full_weights=True, max_steps=3,
            learning_rate=1e-4)
    t.train()
    assert not t.is_peft and len(hook.engine) == 3
    gaps = [(e - tr).abs().mean().item() for e, tr in zip(hook.engine, hook.trainer)]
    moved = [(tr - hook.trainer[0]).abs().mean().item() for tr in hook.trainer]
    engine_moved = [(e - hook.engine[0]).abs().mean().item() for e in hook.engine]
    print("engine-trainer gap", gaps, "trainer moved", moved, "engine moved", engine_moved)
    assert max(gaps) < 0.12  # the served weights are the trainer's, to bf16 noise, at every step ...
    for k in (1, 2):  # ... and they are the updated ones: the engine moved as far as the trainer did
        assert moved[k] > 2 * gaps[k] and abs(engine_moved[k] - moved[k]) < 0.5 * moved[k], k
        change = torch.stack([hook.engine[k] - hook.engine[0], hook.trainer[k] - hook.trainer[0]])
        assert torch.corrcoef(change)[0, 1].item() > 0.9, k
    assert not (tmp_path / "vllm_adapters" / "step-2").exists()


def test_two_processes_share_the_server(tmp_path, server):
    """`accelerate launch` against the real server: the main process writes and loads each adapter while the other
    waits (the server answers HTTP 404 for a request naming an adapter it has not loaded), both sample their own
    prompts from it, the replicas stay identical, and no adapter is left on the server."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from icegrt_trl.vllm_serve import free_port

    script = Path(__file__).parent / "scripts" / "ppo_two_processes_vllm.py"
    out = tmp_path / "two"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                           "127.0.0.1", "--master_port", str(free_port()), str(script), server.url, str(out),
                           "smollm2"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads(Path(f"{out}.rank{r}").read_text()) for r in (0, 1)]
    assert ranks[0]["steps"] == ranks[1]["steps"] == 2 and ranks[0]["world"] == 2
    assert ranks[0]["end"] == ranks[1]["end"] != ranks[0]["start"]
    assert len(ranks[0]["sampled"]) == len(ranks[1]["sampled"]) == 2
    assert all(a != b for a, b in zip(ranks[0]["sampled"], ranks[1]["sampled"]))
    assert [m for m in VLLMServerClient(server.url)._call("GET", "/v1/models")["data"] if m.get("parent")] == []


def test_the_server_stops_with_the_test_that_started_it(server):
    server.stop()
    assert server.proc.returncode is not None
    with pytest.raises(ConnectionError):
        VLLMServerClient(server.url, connect_timeout=0.5).wait_until_up()
