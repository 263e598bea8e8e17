"""vLLM as PPO's rollout engine (server mode): the policy's LoRA adapter is hot-loaded into a vLLM server after each
update, and the rollout's samples come back as token ids with the engine's log-probs.

The engine's log-probs are not the trainer's (other kernels, bf16, a 4-bit base under QLoRA against the server's
bf16 one): the trainer still computes the old log-probs with its own forward, logs the gap, and weights the policy
loss by π_trainer/π_engine (``vllm_importance_sampling_*``, GRPO's correction).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import warnings

import torch

from .vllm_client import VLLMServerClient, VLLMServerError

# a probe with digits, punctuation, a leading space and non-ASCII text: tokenizers that differ split it differently
TOKENIZER_PROBE = " The answer to 17 + 25 is 42. Sort [3, 1, 2]; count: «naïve» — ok?\nYes."


def server_url(args) -> str:
    return args.vllm_server_base_url or f"http://{args.vllm_server_host}:{args.vllm_server_port}"


class VLLMRolloutEngine:
    """One trainer process's link to the vLLM server: checks it serves the policy's tokenizer, keeps the server's
    copy of the policy (its adapter, or its full weights) current, and samples."""

    def __init__(self, args, tokenizer, vocab_size: int, is_main_process: bool = True):
        self.client = VLLMServerClient(server_url(args), args.vllm_server_timeout, args.vllm_request_timeout)
        self.client.wait_until_up()
        self.base_model = self.client.served_model()
        ours = tokenizer.encode(TOKENIZER_PROBE, add_special_tokens=False)
        theirs = self.client.tokenize(self.base_model, TOKENIZER_PROBE)
        if ours != theirs:
            raise ValueError(
                f"The vLLM server at {self.client.base_url} serves {self.base_model!r}, whose tokenizer splits text "
                f"differently from the policy's ({len(theirs)} against {len(ours)} tokens for the same probe): it "
                f"serves another model. Start it with the policy's base model: `icegrt-trl vllm-serve "
                f"{getattr(tokenizer, 'name_or_path', 'BASE_MODEL')}`.")
        self.vocab_size = vocab_size
        self.is_main_process = is_main_process
        self.adapter_dir = os.path.abspath(args.vllm_adapter_dir or os.path.join(args.output_dir, "vllm_adapters"))
        # one name per run and step, the same on every process (each process reaches the same global step)
        self._prefix = "icegrt-" + hashlib.sha1(self.adapter_dir.encode()).hexdigest()[:8]
        self.loaded: str | None = None  # the name to sample from: the adapter's, or the base model's
        self._loaded_folder: str | None = None
        self.synced_step: int | None = None

    def sync_policy(self, policy, adapter_name: str | None, step: int, barrier=None) -> str:
        """Make the server sample from the policy as it is at optimizer step ``step``, written to
        ``adapter_dir/step-N``. A LoRA policy (``adapter_name``): its adapter alone, loaded under a new name (vLLM
        caches adapters by name), the previous one unloaded. A full-weight policy (``adapter_name=None``): the whole
        model, reloaded in place into the served model. The previous folder is removed. The main process writes
        and loads; ``barrier`` lets the others wait. Returns the model name to sample from."""
        if self.synced_step == step and self.loaded is not None:
            return self.loaded
        folder = os.path.join(self.adapter_dir, f"step-{step}")
        name = f"{self._prefix}-step{step}" if adapter_name else self.base_model
        if self.is_main_process:
            if adapter_name:
                policy.save_pretrained(folder, selected_adapters=[adapter_name])
                self.client.load_adapter(name, folder if adapter_name == "default" else
                                         os.path.join(folder, adapter_name))
                if self.loaded is not None:
                    self.client.unload_adapter(self.loaded)
            else:
                policy.save_pretrained(folder, safe_serialization=True)
                self.client.reload_weights(folder)
            if self._loaded_folder is not None:
                shutil.rmtree(self._loaded_folder, ignore_errors=True)
        if barrier is not None:
            barrier()
        self.loaded, self._loaded_folder, self.synced_step = name, folder, step
        return name

    def release(self) -> None:
        """Unload this run's adapter from the server and remove its folder (at the end of ``train``, and of an
        ``evaluate`` outside it; the next generation loads it again). A server that is gone is only warned about. Reloaded full
        weights stay on the server: the next run reloads its own before it samples."""
        if self.loaded is None:
            return
        if self.is_main_process:
            if self.loaded != self.base_model:  # an adapter; reloaded full weights have nothing to unload
                try:
                    self.client.unload_adapter(self.loaded)
                except (ConnectionError, TimeoutError, VLLMServerError) as err:
                    warnings.warn(f"Could not unload the policy adapter from the vLLM server: {err}")
            shutil.rmtree(self._loaded_folder, ignore_errors=True)
        self.loaded = self._loaded_folder = self.synced_step = None

    def sample(self, queries: torch.Tensor, query_mask: torch.Tensor, samples_per_prompt: int, *,
               response_length: int, temperature: float, top_p: float, top_k: int, stop_token_ids: list[int],
               pad_token_id: int, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Responses ``[B, L]`` (right-padded with ``pad_token_id``, L = the longest) and the engine's log-prob of
        each sampled token (0 on padding) for the left-padded ``queries``, whose rows come in groups of
        ``samples_per_prompt`` copies of one prompt (one request each with ``n = samples_per_prompt``)."""
        k = samples_per_prompt
        prompts = [q[m.bool()].tolist() for q, m in zip(queries[::k], query_mask[::k])]
        grid = self.client.sample(self.loaded, prompts, n=k, max_tokens=response_length, temperature=temperature,
                                  top_p=top_p, top_k=top_k, stop_token_ids=stop_token_ids,
                                  vocab_size=self.vocab_size, seed=seed)
        samples = [s for row in grid for s in row]
        longest = max(1, max(len(s.token_ids) for s in samples))
        responses = torch.full((len(samples), longest), pad_token_id, dtype=queries.dtype)
        logprobs = torch.zeros(len(samples), longest, dtype=torch.float32)
        for i, s in enumerate(samples):
            responses[i, :len(s.token_ids)] = torch.tensor(s.token_ids, dtype=queries.dtype)
            logprobs[i, :len(s.logprobs)] = torch.tensor(s.logprobs)
        return responses.to(queries.device), logprobs.to(queries.device)
