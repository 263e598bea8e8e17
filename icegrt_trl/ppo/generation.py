"""Sampling exactly the policy that PPO trains.

PPO computes old log-probs, the ratio and the KL from ``log_softmax(logits / temperature)``. Every other logits
processor that ``generate`` applies — a model's shipped ``repetition_penalty``, ``no_repeat_ngram_size``,
``suppress_tokens``, ``min_new_tokens``, ... — changes what is sampled without changing those log-probs, and PPO
silently goes off-policy. transformers 5 fills every ``GenerationConfig`` field left ``None`` from the model's own
``generation_config``, so building a config is not enough: :func:`isolated_generation` swaps the model's
``generation_config`` for a bare one while generating, and :func:`rollout_generation_config` states every field that
shapes sampling. Only what :class:`PPOConfig` states is used: temperature, top-p, top-k, length, stop and pad tokens.

:func:`generate_rollouts` draws each sampled token from one uniform per row through the inverse CDF instead of
``generate``'s ``torch.multinomial``, which on a CPU draws an exponential for every vocabulary entry one at a time
(10.5 ms per decoded token for 8 rows of a 49k vocabulary against 3.9 ms; ``benchmarks/sampling_draw.py``).
Both sample exactly ``softmax`` of the processed logits.
"""

from __future__ import annotations

import contextlib
import copy
import logging

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper
from transformers import TopKLogitsWarper, TopPLogitsWarper

logger = logging.getLogger(__name__)

# Fields of a model's generation_config that do not change which tokens are sampled (or that PPOConfig owns anyway).
_HARMLESS_FIELDS = {
    "transformers_version", "_from_model_config", "pad_token_id", "bos_token_id", "eos_token_id",
    "decoder_start_token_id", "use_cache", "max_length", "max_new_tokens", "return_dict_in_generate",
    "output_scores", "output_logits", "output_attentions", "output_hidden_states", "cache_implementation",
    "cache_config", "num_return_sequences", "compile_config", "disable_compile", "prefill_chunk_size",
    # sampling knobs PPOConfig states itself: named in the log line when the model's value differs from ours
    "do_sample", "temperature", "top_p", "top_k",
}


def rollout_generation_config(*, max_new_tokens: int, do_sample: bool, temperature: float = 1.0, top_p: float = 1.0,
                              top_k: int = 0, pad_token_id: int | None = None,
                              stop_token_ids: list[int] | None = None) -> GenerationConfig:
    """A GenerationConfig whose every sampling-relevant field is stated (nothing is left to the model's defaults)."""
    return GenerationConfig(
        max_new_tokens=max_new_tokens, min_length=0, do_sample=do_sample,
        temperature=temperature if do_sample else 1.0, top_p=top_p if do_sample else 1.0,
        top_k=(top_k or 0) if do_sample else None, min_p=None, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0,
        repetition_penalty=1.0, encoder_repetition_penalty=1.0, no_repeat_ngram_size=0,
        encoder_no_repeat_ngram_size=0, bad_words_ids=None, suppress_tokens=None, begin_suppress_tokens=None,
        sequence_bias=None, forced_bos_token_id=None, forced_eos_token_id=None,
        exponential_decay_length_penalty=None, renormalize_logits=False, remove_invalid_values=False,
        num_beams=1, num_beam_groups=1, diversity_penalty=0.0, length_penalty=1.0, guidance_scale=None,
        watermarking_config=None, num_return_sequences=1, use_cache=True,
        pad_token_id=pad_token_id, eos_token_id=list(stop_token_ids) if stop_token_ids else None,
    )


def innermost_generator(model):
    """The ``PreTrainedModel`` whose ``generate`` reads ``generation_config`` (under PEFT: the base model)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


@contextlib.contextmanager
def isolated_generation(model):
    """Generate with a bare ``generation_config`` on the model, so none of its shipped settings is merged in (and
    with the LM head's input made contiguous: see :func:`icegrt_trl.ppo.modeling.contiguous_lm_head_input`)."""
    from .modeling import contiguous_lm_head_input

    contiguous_lm_head_input(model)
    target = innermost_generator(model)
    saved = getattr(target, "generation_config", None)
    target.generation_config = GenerationConfig()
    try:
        yield
    finally:
        target.generation_config = saved


def ignored_generation_settings(model, stated: GenerationConfig) -> dict:
    """The model's own generation settings that change sampling and that the rollout ignores (name → value)."""
    shipped = getattr(innermost_generator(model), "generation_config", None)
    if shipped is None:
        return {}
    defaults = GenerationConfig()._get_default_generation_params()
    out = {}
    for key, value in shipped.to_dict().items():
        if value is None or key in _HARMLESS_FIELDS or key.startswith("_"):
            continue
        if key in defaults and value == defaults[key]:
            continue
        if value in ({}, [], ()):
            continue
        out[key] = value
    for key in ("temperature", "top_p", "top_k"):  # the model suggests other sampling settings than PPOConfig's
        value = getattr(shipped, key, None)
        if value is not None and shipped.do_sample and value != getattr(stated, key):
            out[key] = value
    return out


def log_ignored_generation_settings(model, stated: GenerationConfig) -> dict:
    ignored = ignored_generation_settings(model, stated)
    if ignored:
        logger.warning(
            "The model's generation_config sets %s; PPO rollouts ignore these and sample with PPOConfig's "
            "temperature/top_p/top_k/response_length/stop token only, so that the samples come from the policy whose "
            "log-probabilities PPO optimizes (log_softmax(logits / temperature)).",
            ", ".join(f"{k}={v!r}" for k, v in sorted(ignored.items())))
    return ignored


def inverse_cdf_draw(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Per row of ``probs`` ``[B, V]`` (non-negative, not necessarily normalized), the first index ``i`` whose
    cumulative sum reaches ``uniform · total`` for ``uniform`` in (0, 1]: index ``i`` is drawn with probability
    ``probs[i] / total``, and a zero-probability index never (its bin is empty). The cumulative sum is taken in
    float64, so that the bins of a 49k vocabulary keep their widths to ~1e-16."""
    cdf = probs.double().cumsum(-1)
    target = uniform.double().reshape(-1, 1) * cdf[:, -1:]
    return torch.searchsorted(cdf, target).reshape(-1).clamp_(max=probs.shape[-1] - 1)


class InverseCDFSampling(LogitsProcessor):
    """The last processor of a sampling run that ``generate`` runs in greedy mode: it draws each row's token from
    ``softmax(scores)`` and leaves only that token finite, so that the greedy ``argmax`` picks it."""

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(scores.float(), dim=-1)
        uniform = 1.0 - torch.rand(scores.shape[0], dtype=torch.float64, device=scores.device)  # in (0, 1]
        token = inverse_cdf_draw(probs, uniform)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, token[:, None], 0.0)


def sampling_processors(gen: GenerationConfig) -> LogitsProcessorList:
    """The warpers ``generate`` applies when sampling with ``gen`` (temperature, top-k, top-p, in its order), then the
    draw."""
    processors = LogitsProcessorList()
    if gen.temperature is not None and gen.temperature != 1.0:
        processors.append(TemperatureLogitsWarper(gen.temperature))
    if gen.top_k:
        processors.append(TopKLogitsWarper(top_k=gen.top_k, min_tokens_to_keep=1))
    if gen.top_p is not None and gen.top_p < 1.0:
        processors.append(TopPLogitsWarper(top_p=gen.top_p, min_tokens_to_keep=1))
    processors.append(InverseCDFSampling())
    return processors


def generate_rollouts(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      generation_config: GenerationConfig) -> torch.Tensor:
    """``model.generate`` with only ``generation_config``'s settings (:func:`isolated_generation`); a sampling
    config samples through :func:`sampling_processors` (same distribution as ``generate``'s sampling, cheaper draw)."""
    kwargs = {}
    if generation_config.do_sample:
        kwargs["logits_processor"] = sampling_processors(generation_config)
        generation_config = copy.deepcopy(generation_config)
        generation_config.update(do_sample=False, temperature=1.0, top_p=1.0, top_k=None)
    with isolated_generation(model):
        return model.generate(input_ids=input_ids, attention_mask=attention_mask,
                              generation_config=generation_config, **kwargs)
