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


def test_a_full_weight_policy_is_refused(tmp_path, tok, prompts):
    with pytest.raises(ValueError, match="use_vllm=True needs a PEFT LoRA policy"):
        trainer(tmp_path, tok, prompts, "http://127.0.0.1:1", peft=False)


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
