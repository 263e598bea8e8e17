"""vLLM rollouts: what is refused, and the server faults, each with a clear error before any weights change.

The faults are played by small local HTTP servers (no vLLM needed); tests/test_vllm_rollouts.py runs the real one."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from peft import LoraConfig

from icegrt_trl import PPOConfig, PPOTrainer
from icegrt_trl.ppo.vllm_client import VLLMServerClient, VLLMServerError, parse_completions
from icegrt_trl.testbed import gold_reward, tiny_causal_lm
from icegrt_trl.vllm_serve import free_port, serve_command, serve_env

# the tiny-model fixtures are tests/test_ppo_speed_options.py's (tests/ is on sys.path under pytest)
from test_ppo_speed_options import SMALL, prompts, tok  # noqa: E402,F401  (prompts, tok: fixtures)


class FakeServer:
    """A local HTTP server answering each path with ``routes[path](payload) -> (status, body)``."""

    def __init__(self, routes: dict):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                n = int(self.headers.get("Content-Length") or 0)
                payload = json.loads(self.rfile.read(n)) if n else None
                outer.requests.append((self.command, self.path, payload))
                route = routes.get(self.path)
                status, body = route(payload) if route else (404, {"error": "no route"})
                if status is None:  # drop the connection without an answer
                    self.close_connection = True
                    return
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.requests = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def healthy_routes(tok, tokens_for=None):
    return {
        "/health": lambda p: (200, {}),
        "/v1/models": lambda p: (200, {"data": [{"id": "/models/base", "parent": None}]}),
        "/tokenize": lambda p: (200, {"tokens": (tokens_for or (lambda text: tok.encode(
            text, add_special_tokens=False)))(p["prompt"])}),
    }


def lora():
    return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


def vllm_cfg(tmp_path, url, **kw):
    base = dict(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[], per_device_train_batch_size=2,
                num_ppo_epochs=1, max_steps=1, response_length=4, save_strategy="no", disable_tqdm=True,
                num_sample_generations=0, use_vllm=True, vllm_server_base_url=url, vllm_server_timeout=2.0,
                vllm_request_timeout=1.0, gradient_checkpointing=False, seed=0)
    base.update(kw)
    return PPOConfig(**base)


def trainer(tmp_path, tok, prompts, url, peft=True, **kw):
    return PPOTrainer(args=vllm_cfg(tmp_path, url, **kw), processing_class=tok,
                      model=tiny_causal_lm("llama", tok, **SMALL), reward_model=gold_reward, train_dataset=prompts,
                      peft_config=lora() if peft else None)


def weights(t):
    return {n: p.detach().clone() for n, p in t.model.named_parameters()}


# ---------------------------------------------------------------- refused before connecting
def test_colocate_mode_is_refused_with_the_mode_that_exists(tmp_path):
    with pytest.raises(ValueError, match="only vllm_mode='server' is available"):
        vllm_cfg(tmp_path, "http://127.0.0.1:1", vllm_mode="colocate")


def test_unknown_importance_sampling_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="vllm_importance_sampling_mode='tokens'"):
        vllm_cfg(tmp_path, "http://127.0.0.1:1", vllm_importance_sampling_mode="tokens")


def test_a_peft_policy_without_lora_layers_is_refused(tmp_path, tok, prompts):
    from peft import IA3Config

    with pytest.raises(ValueError, match="use_vllm=True with a PEFT policy needs LoRA layers"):
        PPOTrainer(args=vllm_cfg(tmp_path, "http://127.0.0.1:1"), processing_class=tok,
                   model=tiny_causal_lm("llama", tok, **SMALL), reward_model=gold_reward, train_dataset=prompts,
                   peft_config=IA3Config(target_modules=["q_proj", "v_proj"], feedforward_modules=[],
                                         task_type="CAUSAL_LM"))


# ---------------------------------------------------------------- server faults
def test_unreachable_server_names_the_url_and_how_to_start_one(tmp_path, tok, prompts):
    url = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=r"No vLLM server answered at .* within vllm_server_timeout=2 s; "
                                              r"start one with `icegrt-trl vllm-serve"):
        trainer(tmp_path, tok, prompts, url)
    assert time.monotonic() - start < 30


def test_a_server_with_another_tokenizer_is_refused(tmp_path, tok, prompts):
    server = FakeServer(healthy_routes(tok, tokens_for=lambda text: [1, 2, 3]))
    try:
        with pytest.raises(ValueError, match="tokenizer splits text differently .* it serves another model"):
            trainer(tmp_path, tok, prompts, server.url)
    finally:
        server.close()


def test_a_slow_server_times_out_before_any_weights_change(tmp_path, tok, prompts):
    def slow(payload):
        time.sleep(3)
        return 200, {}

    server = FakeServer({**healthy_routes(tok), "/v1/load_lora_adapter": lambda p: (200, {}),
                         "/v1/unload_lora_adapter": lambda p: (200, {}), "/v1/completions": slow})
    try:
        t = trainer(tmp_path, tok, prompts, server.url)
        before = weights(t)
        with pytest.raises(TimeoutError, match="did not answer POST /v1/completions within 1 s. Raise "
                                               "vllm_request_timeout"):
            t.train()
        assert all(torch.equal(before[n], p) for n, p in t.model.named_parameters())
        assert t.state.global_step == 0
    finally:
        server.close()


def test_a_bad_completion_answer_is_refused_before_any_weights_change(tmp_path, tok, prompts):
    server = FakeServer({**healthy_routes(tok), "/v1/load_lora_adapter": lambda p: (200, {}),
                         "/v1/unload_lora_adapter": lambda p: (200, {}),
                         "/v1/completions": lambda p: (200, {"choices": [{"index": 0, "text": "hi"}]})})
    try:
        t = trainer(tmp_path, tok, prompts, server.url)
        before = weights(t)
        with pytest.raises(VLLMServerError, match="Bad completion answer .* expected 2 choices"):
            t.train()
        assert all(torch.equal(before[n], p) for n, p in t.model.named_parameters())
        # the adapter was written for the server and loaded under a name of this run and step; train() unloaded
        # it and removed its folder on the way out
        loads = [p for m, path, p in server.requests if path == "/v1/load_lora_adapter"]
        assert len(loads) == 1 and loads[0]["lora_name"].endswith("-step0")
        assert loads[0]["lora_path"] == str(tmp_path / "vllm_adapters" / "step-0")
        unloads = [p for m, path, p in server.requests if path == "/v1/unload_lora_adapter"]
        assert unloads == [{"lora_name": loads[0]["lora_name"]}]
        assert not (tmp_path / "vllm_adapters" / "step-0").exists()
    finally:
        server.close()


def test_an_adapter_the_server_refuses_is_named_with_its_reason(tmp_path, tok, prompts):
    server = FakeServer({**healthy_routes(tok), "/v1/load_lora_adapter": lambda p: (
        400, {"error": "LoRA rank 4 is greater than max_lora_rank 2"})})
    try:
        t = trainer(tmp_path, tok, prompts, server.url)
        with pytest.raises(VLLMServerError, match=r"refused POST /v1/load_lora_adapter \(HTTP 400\).*max_lora_rank"):
            t.train()
    finally:
        server.close()


# ---------------------------------------------------------------- the answer parser
def choice(i, ids, lps):
    return {"index": i, "token_ids": ids, "logprobs": {"token_logprobs": lps}}


def test_parse_completions_orders_samples_by_prompt_and_checks_them():
    out = {"choices": [choice(3, [5], [-0.5]), choice(0, [1, 2], [-0.1, -0.2]), choice(2, [4], [-0.4]),
                       choice(1, [3], [-0.3])]}
    grid = parse_completions(out, n_prompts=2, n=2, max_tokens=4, vocab_size=10, where="x")
    assert [[s.token_ids for s in row] for row in grid] == [[[1, 2], [3]], [[4], [5]]]
    assert grid[0][0].logprobs == [-0.1, -0.2]
    bad = [({"choices": [choice(0, [1], [-0.1])]}, "expected 2 choices"),
           ({"choices": [choice(0, [1], [-0.1]), choice(0, [2], [-0.1])]}, "out of range or repeated"),
           ({"choices": [choice(0, [1], [-0.1]), choice(1, [99], [-0.1])]}, "outside the vocabulary"),
           ({"choices": [choice(0, [1], [-0.1]), choice(1, [1, 2, 3, 4, 5], [-0.1] * 5)]}, "more than 4 tokens"),
           ({"choices": [choice(0, [1], [-0.1]), choice(1, [2], [None])]}, "missing, not finite or positive"),
           ({"choices": [choice(0, [1], [-0.1]), choice(1, [2, 3], [-0.1])]}, "one log-prob each")]
    for answer, why in bad:
        with pytest.raises(VLLMServerError, match=why):
            parse_completions(answer, n_prompts=1, n=2, max_tokens=4, vocab_size=10, where="x")


def test_every_sampling_setting_is_stated_in_the_request(tok):
    seen = {}

    def completions(p):
        seen.update(p)
        return 200, {"choices": [choice(0, [1], [-0.1])]}

    server = FakeServer({"/v1/completions": completions})
    try:
        VLLMServerClient(server.url).sample("m", [[1, 2]], n=1, max_tokens=4, temperature=0.7, top_p=0.9, top_k=0,
                                            stop_token_ids=[2], vocab_size=10, seed=3)
    finally:
        server.close()
    # what the trainer owns, and the server's defaults switched off (model generation_config, its own EOS rule)
    assert {k: seen[k] for k in ("n", "max_tokens", "temperature", "top_p", "top_k", "stop_token_ids", "seed")} == \
        {"n": 1, "max_tokens": 4, "temperature": 0.7, "top_p": 0.9, "top_k": -1, "stop_token_ids": [2], "seed": 3}
    assert seen["ignore_eos"] is True and seen["repetition_penalty"] == 1.0 and seen["min_p"] == 0.0
    assert seen["presence_penalty"] == seen["frequency_penalty"] == 0.0 and seen["prompt"] == [[1, 2]]


def test_vllm_serve_command_has_what_the_trainer_relies_on():
    cmd = serve_command("/m", python="/venv/bin/python", port=8123, max_lora_rank=16)
    assert cmd[:3] == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    text = " ".join(cmd)
    for part in ("--model /m", "--enable-lora", "--max-lora-rank 16", "--generation-config vllm",
                 "--logprobs-mode processed_logprobs", "--port 8123", "--host 127.0.0.1"):
        assert part in text
    env = serve_env({})
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True" and env["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert env["VLLM_SERVER_DEV_MODE"] == "1"  # /collective_rpc: full-weight policies are reloaded through it


def test_a_server_gone_mid_run_and_odd_answers_are_named():
    dead = VLLMServerClient(f"http://127.0.0.1:{free_port()}", request_timeout=2)
    with pytest.raises(ConnectionError, match="No vLLM server answers at .*; start one with `icegrt-trl vllm-serve"):
        dead.served_model()
    server = FakeServer({"/v1/models": lambda p: (200, {"data": []}), "/tokenize": lambda p: (200, {"count": 3})})
    try:
        client = VLLMServerClient(server.url)
        with pytest.raises(VLLMServerError, match="lists no model at /v1/models"):
            client.served_model()
        with pytest.raises(VLLMServerError, match="Unexpected /tokenize answer"):
            client.tokenize("m", "text")
    finally:
        server.close()


def test_a_server_that_drops_the_request_is_named():
    server = FakeServer({"/v1/models": lambda p: (None, None)})
    try:
        with pytest.raises(ConnectionError, match="dropped the connection during GET /v1/models"):
            VLLMServerClient(server.url).served_model()
    finally:
        server.close()


def test_an_adapter_that_cannot_be_unloaded_at_the_end_is_warned_about(tmp_path, tok, prompts):
    server = FakeServer({**healthy_routes(tok), "/v1/load_lora_adapter": lambda p: (200, {}),
                         "/v1/unload_lora_adapter": lambda p: (500, {"error": "busy"}),
                         "/v1/completions": lambda p: (200, {"choices": []})})
    try:
        t = trainer(tmp_path, tok, prompts, server.url)
        with pytest.warns(UserWarning, match="Could not unload the policy adapter from the vLLM server"):
            with pytest.raises(VLLMServerError, match="expected 2 choices"):
                t.train()
    finally:
        server.close()


def test_vllm_serve_without_vllm_says_how_to_build_its_environment(capsys):
    import sys

    from icegrt_trl.cli import main

    assert main(["vllm-serve", "/some/model", "--python", sys.executable]) == 2  # this environment has no vLLM
    err = capsys.readouterr().err
    assert "vLLM cannot be imported by" in err and "bash scripts/make_vllm_env.sh" in err
    assert "Traceback" not in err


# ---------------------------------------------------------------- several processes
class ServerThatKnowsItsAdapters:
    """A fake vLLM server (also used by the full-weight tests below) that behaves as the real one where several
    processes could trip: an adapter loads only
    from a folder that holds one, a request naming an adapter that is not loaded is refused (HTTP 404), and so is
    unloading one twice. It samples a fixed function of the prompt, with log-prob -1 per token, and records what
    a full-weight reload reads."""

    def __init__(self, tok):
        self.loaded, self.events, self.vocab = set(), [], len(tok)
        self.server = FakeServer({**healthy_routes(tok), "/v1/load_lora_adapter": self.load,
                                  "/v1/unload_lora_adapter": self.unload, "/v1/completions": self.complete,
                                  "/collective_rpc": self.reload,
                                  "/reset_prefix_cache?reset_running_requests=true": self.reset_prefix_cache})

    def load(self, p):
        import os

        if not os.path.exists(os.path.join(p["lora_path"], "adapter_config.json")):
            return 400, {"error": f"No adapter found at {p['lora_path']}"}
        self.loaded.add(p["lora_name"])
        self.events.append(("load", p["lora_name"]))
        return 200, {}

    def unload(self, p):
        if p["lora_name"] not in self.loaded:
            return 404, {"error": f"The lora adapter '{p['lora_name']}' cannot be found."}
        self.loaded.remove(p["lora_name"])
        self.events.append(("unload", p["lora_name"]))
        return 200, {}

    def reload(self, p):
        """``/collective_rpc`` with ``reload_weights``: the checkpoint must be in the folder when it is called."""
        from safetensors.torch import load_file

        assert p["method"] == "reload_weights"
        folder = p["kwargs"]["weights_path"]
        self.events.append(("reload", folder, load_file(f"{folder}/model.safetensors")))
        return 200, {"results": [None]}

    def reset_prefix_cache(self, p):
        self.events.append(("reset_prefix_cache",))
        return 200, {"success": True}

    def complete(self, p):
        if p["model"] != "/models/base" and p["model"] not in self.loaded:
            return 404, {"error": f"The model `{p['model']}` does not exist."}
        self.events.append(("sample", p["model"], [list(q) for q in p["prompt"]]))
        choices = [choice(i * p["n"] + j, [3 + (sum(q) + j + k) % (self.vocab - 3) for k in range(3)], [-1.0] * 3)
                   for i, q in enumerate(p["prompt"]) for j in range(p["n"])]
        return 200, {"choices": choices}


def test_two_processes_load_each_adapter_once_and_sample_their_own_prompts_from_it(tmp_path, tok):
    """`accelerate launch` with vLLM: the main process writes and loads the adapter, the others wait for it (a
    request naming an adapter not yet loaded would fail the run), each process samples its own prompts, and the
    replicas stay identical."""
    import subprocess
    import sys
    from pathlib import Path

    fake = ServerThatKnowsItsAdapters(tok)
    out = tmp_path / "vllm2"
    script = Path(__file__).parent / "scripts" / "ppo_two_processes_vllm.py"
    try:
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(script),
                               fake.server.url, str(out)], capture_output=True, text=True, timeout=300)
    finally:
        fake.server.close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads(Path(f"{out}.rank{r}").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == 2 and ranks[0]["steps"] == ranks[1]["steps"] == 3
    assert ranks[0]["end"] == ranks[1]["end"] != ranks[0]["start"]  # trained, replicas identical

    loads = [e[1] for e in fake.events if e[0] == "load"]
    assert len(loads) == 3 and [n.rsplit("-", 1)[1] for n in loads] == ["step0", "step1", "step2"]
    assert [e[1] for e in fake.events if e[0] == "unload"] == loads  # each once, the last at the end of train()
    assert not fake.loaded and not (tmp_path / "vllm2.run" / "vllm_adapters" / "step-2").exists()
    samples = [e for e in fake.events if e[0] == "sample"]
    assert [e[1] for e in samples] == [n for n in loads for _ in range(2)]  # both processes, each adapter
    for r, rank in enumerate(ranks):  # every rollout's prompts reached the server, one request per process
        assert len(rank["sampled"]) == 3
        for rollout in rank["sampled"]:
            assert rollout in [e[2] for e in samples]
    assert all(a != b for a, b in zip(ranks[0]["sampled"], ranks[1]["sampled"]))  # each process its own prompts


# ---------------------------------------------------------------- full-weight policies
def test_a_full_weight_policy_is_written_whole_and_reloaded_after_each_update(tmp_path, tok, prompts):
    fake = ServerThatKnowsItsAdapters(tok)
    try:
        # a reward that tells the fake server's samples apart (the gold reward gives them all 0: no update)
        t = PPOTrainer(args=vllm_cfg(tmp_path, fake.server.url, max_steps=3, learning_rate=1e-2),
                       processing_class=tok, model=tiny_causal_lm("llama", tok, **SMALL), train_dataset=prompts,
                       reward_model=lambda prompts, completions, **kw: [len(set(c)) / 4 for c in completions])
        start = {n: p.detach().clone() for n, p in t._unwrapped().policy.state_dict().items()}
        t.train()
    finally:
        fake.server.close()
    kinds = [e[0] for e in fake.events]
    # reloaded before each rollout, the prefix cache (old weights' key/values) dropped before any sample
    assert kinds == ["reload", "reset_prefix_cache", "sample"] * 3
    reloads = [e for e in fake.events if e[0] == "reload"]
    assert [e[1] for e in reloads] == [str(tmp_path / "vllm_adapters" / f"step-{k}") for k in range(3)]
    # the whole policy as it was at step 0, then as trained at each step; the samples ask for the served model
    first = reloads[0][2]
    assert all(torch.equal(first[n], start[n]) for n in first) and len(first) >= len(start) - 1  # tied head
    for before, after in zip(reloads, reloads[1:]):
        assert any(not torch.equal(after[2][n], before[2][n]) for n in first)
    assert all(e[1] == "/models/base" for e in fake.events if e[0] == "sample")
    assert not (tmp_path / "vllm_adapters" / "step-2").exists()  # nothing left behind; nothing to unload


def test_a_full_weight_policy_needs_a_server_in_dev_mode(tmp_path, tok, prompts):
    server = FakeServer(healthy_routes(tok))  # no /collective_rpc: a server started without VLLM_SERVER_DEV_MODE
    try:
        t = trainer(tmp_path, tok, prompts, server.url, peft=False)
        before = weights(t)
        with pytest.raises(VLLMServerError, match="has no /collective_rpc route, which a full-weight policy needs .* "
                                                  "VLLM_SERVER_DEV_MODE=1"):
            t.train()
        assert all(torch.equal(before[n], p) for n, p in t.model.named_parameters())
    finally:
        server.close()


def test_a_full_weight_policy_sharded_across_processes_is_refused(tmp_path, tok, prompts):
    fake = ServerThatKnowsItsAdapters(tok)
    try:
        t = trainer(tmp_path, tok, prompts, fake.server.url, peft=False)
        t.is_fsdp_enabled = True  # as Trainer sets it under FSDP: no process holds the whole policy to write
        with pytest.raises(ValueError, match=r"full-weight policy sharded across processes .* Use ZeRO-2 or plain "
                                             r"data parallelism, a LoRA policy"):
            t._connect_vllm(t.model)
    finally:
        fake.server.close()


def test_a_prefix_cache_that_cannot_be_reset_is_named():
    server = FakeServer({"/collective_rpc": lambda p: (200, {"results": [None]}),
                         "/reset_prefix_cache?reset_running_requests=true": lambda p: (200, {"success": False})})
    try:
        with pytest.raises(VLLMServerError, match="could not reset its prefix cache after reloading the weights"):
            VLLMServerClient(server.url).reload_weights("/some/folder")
    finally:
        server.close()


def test_a_resumed_full_weight_run_reloads_the_restored_weights_before_it_samples(tmp_path, tok, prompts):
    """The checkpoint/resume contract with full weights: the resumed run's first request samples from the weights
    of the checkpoint, which it writes and has the server reload first."""
    fake = ServerThatKnowsItsAdapters(tok)

    def run(out, **kw):
        return PPOTrainer(args=vllm_cfg(out, fake.server.url, max_steps=3, learning_rate=1e-2, save_strategy="steps",
                                        save_steps=1, **kw),
                          processing_class=tok, model=tiny_causal_lm("llama", tok, **SMALL), train_dataset=prompts,
                          reward_model=lambda prompts, completions, **kw: [len(set(c)) / 4 for c in completions])

    try:
        run(tmp_path / "a").train()
        full = [e for e in fake.events if e[0] == "reload"]
        fake.events.clear()
        run(tmp_path / "b").train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-1"))
        resumed = [e for e in fake.events if e[0] == "reload"]
    finally:
        fake.server.close()
    assert [e[0] for e in fake.events][:3] == ["reload", "reset_prefix_cache", "sample"]
    assert [e[1].rsplit("-", 1)[1] for e in resumed] == ["1", "2"]  # from step 1 on, as the uninterrupted run
    for got, want in zip(resumed, full[1:]):  # the restored weights, then the same update from them
        assert got[2].keys() == want[2].keys()
        assert all(torch.allclose(got[2][n], want[2][n], atol=1e-6) for n in want[2])
