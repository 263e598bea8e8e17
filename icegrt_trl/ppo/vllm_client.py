"""A client for a vLLM server (its OpenAI-compatible API) used as PPO's rollout engine.

Only the Python standard library is used: vLLM itself lives in its own environment (it pins other versions of
transformers than ours), often on another machine. What the trainer needs from the server:

- ``GET /health`` and ``GET /v1/models``: is it up, and what does it serve;
- ``POST /tokenize``: the served tokenizer must be the policy's (a wrong model is caught before any update);
- ``POST /v1/load_lora_adapter`` / ``/v1/unload_lora_adapter``: the policy's adapter after each update (the server
  needs ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``; ``icegrt-trl vllm-serve`` sets it);
- ``POST /collective_rpc`` (``reload_weights``) and ``POST /reset_prefix_cache``: a full-weight policy, written to
  disk after each update, reloaded in place (the server needs ``VLLM_SERVER_DEV_MODE=1``; ``icegrt-trl vllm-serve``
  sets it);
- ``POST /v1/completions`` with token-id prompts: samples as token ids with the log-prob of each sampled token.

Every sampling field is stated in the request (the server would otherwise fill them from the model's
``generation_config``, e.g. a repetition penalty), and the server's own end-of-sequence rule is switched off
(``ignore_eos``) so that only the trainer's stop tokens end a response: the same rule as ``model.generate`` in
:mod:`icegrt_trl.ppo.generation`.
"""

from __future__ import annotations

import http.client
import json
import math
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

START_HINT = "start one with `icegrt-trl vllm-serve MODEL --port PORT` (docs/vllm.md)"


class VLLMServerError(RuntimeError):
    """The vLLM server answered, but not with what the trainer asked for."""


@dataclass
class EngineSample:
    """One sampled completion: its token ids and the engine's log-prob of each of them."""

    token_ids: list[int]
    logprobs: list[float]


class VLLMServerClient:
    """HTTP calls to one vLLM server. ``connect_timeout``: how long :meth:`wait_until_up` waits for the server;
    ``request_timeout``: how long one generation or adapter call may take."""

    def __init__(self, base_url: str, connect_timeout: float = 240.0, request_timeout: float = 600.0):
        self.base_url = base_url.rstrip("/")
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout

    # ---------------------------------------------------------------- transport
    def _call(self, method: str, path: str, payload: dict | None = None, timeout: float | None = None):
        url = self.base_url + path
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data is not None else {})
        timeout = self.request_timeout if timeout is None else timeout
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                body = resp.read().decode()
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:500]
            raise VLLMServerError(f"The vLLM server at {self.base_url} refused {method} {path} "
                                  f"(HTTP {e.code}): {detail}") from None
        except (TimeoutError, socket.timeout):
            raise self._timed_out(method, path, timeout) from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, (TimeoutError, socket.timeout)):
                raise self._timed_out(method, path, timeout) from None
            raise ConnectionError(f"No vLLM server answers at {self.base_url} ({e.reason}); {START_HINT}, or set "
                                  f"vllm_server_base_url to where it runs.") from None
        except (ConnectionError, http.client.HTTPException) as e:  # the server died or dropped the request
            raise ConnectionError(f"The vLLM server at {self.base_url} dropped the connection during {method} {path} "
                                  f"({type(e).__name__}); check that it still runs (its log) and restart it: "
                                  f"{START_HINT}.") from None
        if not body:
            return None
        try:
            return json.loads(body)
        except json.JSONDecodeError:
            return body

    def _timed_out(self, method: str, path: str, timeout: float) -> TimeoutError:
        return TimeoutError(f"The vLLM server at {self.base_url} did not answer {method} {path} within {timeout:g} s. "
                            f"Raise vllm_request_timeout if the server is just slow (a CPU server warms up on its "
                            f"first requests), or check that it is not stuck.")

    # ---------------------------------------------------------------- server state
    def wait_until_up(self) -> None:
        """Poll ``/health`` until the server answers, at most ``connect_timeout`` seconds."""
        deadline = time.monotonic() + self.connect_timeout
        while True:
            try:
                self._call("GET", "/health", timeout=5.0)
                return
            except (ConnectionError, TimeoutError, VLLMServerError):
                if time.monotonic() >= deadline:
                    raise ConnectionError(
                        f"No vLLM server answered at {self.base_url} within vllm_server_timeout="
                        f"{self.connect_timeout:g} s; {START_HINT}, or set vllm_server_base_url to where it "
                        f"runs.") from None
                time.sleep(1.0)

    def served_model(self) -> str:
        """The base model's name on the server (the first entry of ``/v1/models`` that is not an adapter)."""
        out = self._call("GET", "/v1/models")
        models = out.get("data") if isinstance(out, dict) else None
        if not models:
            raise VLLMServerError(f"The vLLM server at {self.base_url} lists no model at /v1/models: {out!r:.300}")
        bases = [m for m in models if not m.get("parent")]
        return (bases or models)[0]["id"]

    def tokenize(self, model: str, text: str) -> list[int]:
        out = self._call("POST", "/tokenize", {"model": model, "prompt": text, "add_special_tokens": False})
        if not isinstance(out, dict) or not isinstance(out.get("tokens"), list):
            raise VLLMServerError(f"Unexpected /tokenize answer from {self.base_url}: {out!r:.300}")
        return out["tokens"]

    def load_adapter(self, name: str, path: str) -> None:
        self._call("POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})

    def unload_adapter(self, name: str) -> None:
        self._call("POST", "/v1/unload_lora_adapter", {"lora_name": name})

    def reload_weights(self, folder: str) -> None:
        """Load the served model's weights in place from the safetensors checkpoint in ``folder``, then drop the
        prefix cache, whose key/value blocks were computed with the old weights."""
        try:
            self._call("POST", "/collective_rpc", {"method": "reload_weights", "kwargs": {"weights_path": folder}})
        except VLLMServerError as err:
            if "HTTP 404" not in str(err):
                raise
            raise VLLMServerError(
                f"The vLLM server at {self.base_url} has no /collective_rpc route, which a full-weight policy needs "
                f"to reload its weights after each update: restart the server with VLLM_SERVER_DEV_MODE=1 in its "
                f"environment (`icegrt-trl vllm-serve` sets it), or train a LoRA policy (peft_config=...), whose "
                f"adapter is hot-loaded without it.") from None
        out = self._call("POST", "/reset_prefix_cache?reset_running_requests=true")
        if isinstance(out, dict) and out.get("success") is False:
            raise VLLMServerError(f"The vLLM server at {self.base_url} could not reset its prefix cache after "
                                  f"reloading the weights (is another client sampling from it?); its cached blocks "
                                  f"would mix old and new weights.")

    # ---------------------------------------------------------------- sampling
    def sample(self, model: str, prompts: list[list[int]], *, n: int, max_tokens: int, temperature: float,
               top_p: float, top_k: int, stop_token_ids: list[int], vocab_size: int,
               seed: int | None = None) -> list[list[EngineSample]]:
        """``n`` completions of each token-id prompt (``temperature=0``: greedy), as ``[prompt][sample]``."""
        payload = {
            "model": model, "prompt": prompts, "n": n, "max_tokens": max_tokens,
            "temperature": temperature, "top_p": top_p if temperature > 0 else 1.0,
            "top_k": top_k if (top_k and temperature > 0) else -1, "min_p": 0.0, "min_tokens": 0,
            "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
            "ignore_eos": True, "stop_token_ids": list(stop_token_ids), "stop": [],
            "include_stop_str_in_output": True, "skip_special_tokens": False, "logprobs": 0,
            "return_token_ids": True, "echo": False, "stream": False,
        }
        if seed is not None:
            payload["seed"] = seed
        out = self._call("POST", "/v1/completions", payload)
        return parse_completions(out, len(prompts), n, max_tokens, vocab_size, self.base_url)


def parse_completions(out, n_prompts: int, n: int, max_tokens: int, vocab_size: int,
                      where: str) -> list[list[EngineSample]]:
    """The samples of a ``/v1/completions`` answer, checked: every (prompt, sample) present once, token ids in the
    vocabulary, at most ``max_tokens`` of them, one finite log-prob per token."""
    def bad(why: str):
        return VLLMServerError(f"Bad completion answer from the vLLM server at {where}: {why}. Is it a vLLM server "
                               f"that returns token ids (vLLM ≥ 0.10; `return_token_ids`)?")

    choices = out.get("choices") if isinstance(out, dict) else None
    if not isinstance(choices, list) or len(choices) != n_prompts * n:
        raise bad(f"expected {n_prompts * n} choices, got {len(choices) if isinstance(choices, list) else out!r:.200}")
    grid: list[list[EngineSample | None]] = [[None] * n for _ in range(n_prompts)]
    for c in choices:
        i = c.get("index")
        if not isinstance(i, int) or not 0 <= i < n_prompts * n or grid[i // n][i % n] is not None:
            raise bad(f"choice index {i!r} out of range or repeated")
        ids = c.get("token_ids")
        lp = (c.get("logprobs") or {}).get("token_logprobs")
        if not isinstance(ids, list) or not isinstance(lp, list) or len(ids) != len(lp):
            raise bad(f"choice {i} has no token ids with one log-prob each")
        if len(ids) > max_tokens or any(not isinstance(t, int) or not 0 <= t < vocab_size for t in ids):
            raise bad(f"choice {i} has more than {max_tokens} tokens or a token id outside the vocabulary")
        if any(x is None or not math.isfinite(x) or x > 1e-4 for x in lp):
            raise bad(f"choice {i} has a log-prob that is missing, not finite or positive")
        grid[i // n][i % n] = EngineSample(list(ids), [float(x) for x in lp])
    return grid  # type: ignore[return-value]
