"""Reward sources behind one interface: ``source(batch) -> scores [B]`` (float32, on the batch's device).

* :class:`ModelReward` — a sequence-classification reward model, scored on the sequences it was trained on. A
  conversational prompt is rendered with the completion through the reward tokenizer's chat template (as TRL's GRPO
  does, and as the RewardTrainer trains): the template closes the assistant turn with tokens the policy never writes
  (ChatML: ``<|im_end|>`` then ``\n``), and the reward is read at the last one. A plain-text prompt with the
  policy's tokenizer is scored on the policy's token ids directly (they end with the EOS the RewardTrainer
  appends); with another tokenizer (another family or a bigger size, ICE-GRT's "reward size scaling") its text is
  decoded and re-tokenized.
* :class:`CallableReward` — ``fn(prompts, completions, **kwargs) -> list[float]`` as GRPO's reward functions.

Bad outputs (wrong count, NaN, inf, None) raise before any weight changes: scoring precedes every update.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .data import special_tokens_added
from .prefix import forward_after_prefix, prefix_cache, prefix_length_to_share, split_shared_prefix


def _name(obj) -> str:
    if isinstance(obj, PreTrainedModel):
        return obj.config._name_or_path.split("/")[-1] or type(obj).__name__
    return getattr(obj, "__name__", type(obj).__name__)


def tokenizers_match(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase) -> bool:
    return a is b or (a.get_vocab() == b.get_vocab() and a.pad_token_id == b.pad_token_id)


class ModelReward:
    """Score with a ``AutoModelForSequenceClassification``-style model (one logit per sequence)."""

    def __init__(self, model: PreTrainedModel, policy_tokenizer: PreTrainedTokenizerBase,
                 tokenizer: PreTrainedTokenizerBase | None = None, batch_size: int = 64):
        self.model, self.batch_size, self.name = model, batch_size, _name(model)
        self.share_prompt_prefix = False  # PPOTrainer turns it on with PPOConfig.share_prompt_prefix
        self.model.eval().requires_grad_(False)
        if tokenizer is None:
            vocab = getattr(model.config, "vocab_size", None)
            pad = getattr(model.config, "pad_token_id", None)
            if (vocab is not None and vocab != len(policy_tokenizer)) or (
                    pad is not None and pad != policy_tokenizer.pad_token_id):
                raise ValueError(
                    f"The reward model {self.name!r} has vocab_size={vocab} and pad_token_id={pad}, but the policy "
                    f"tokenizer has {len(policy_tokenizer)} tokens and pad_token_id={policy_tokenizer.pad_token_id}: "
                    f"their tokenizers differ. Pass the reward model's tokenizer as `reward_processing_classes`."
                )
            self.same_tokenizer = True
            self.tokenizer = policy_tokenizer
        else:
            self.same_tokenizer = tokenizers_match(tokenizer, policy_tokenizer)
            self.tokenizer = tokenizer
            if self.tokenizer.pad_token is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token
        if getattr(self.model.config, "pad_token_id", None) is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id

    def _texts(self, batch) -> list[str]:
        """Re-render prompt + completion for the reward model's tokenizer."""
        tok, out = self.tokenizer, []
        rows = zip(batch["prompts"], batch["prompt_texts"], batch["completions_text"], batch["ended"].tolist())
        for prompt, prompt_text, completion, ended in rows:
            if self._renders_chat(prompt):
                msgs = prompt + [{"role": "assistant", "content": completion.strip()}]
                out.append(tok.apply_chat_template(msgs, tokenize=False))
            else:  # the BOS a Llama-family tokenizer adds in training, never an EOS the policy did not write
                bos = tok.bos_token if special_tokens_added(tok)[0] and not prompt_text.startswith(tok.bos_token) \
                    else ""
                out.append(bos + prompt_text + completion + ((tok.eos_token or "") if ended else ""))
        return out

    def _renders_chat(self, prompt) -> bool:
        """A conversational prompt, and a reward tokenizer with a chat template to render it."""
        return isinstance(prompt, list) and bool(getattr(self.tokenizer, "chat_template", None))

    def _reads_policy_tokens(self, batch) -> bool:
        """Whether the policy's token ids are the reward model's input as they are. Not for a conversational
        prompt: scored on the policy's ids, a ChatML reward model would be read at ``<|im_end|>`` instead of the
        ``\n`` after it where it was trained, a position whose score can even be anti-correlated with the
        trained one's."""
        return self.same_tokenizer and not self._renders_chat(batch["prompts"][0])

    @torch.no_grad()
    def __call__(self, batch: dict[str, Any]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        if self._reads_policy_tokens(batch):
            ids, mask = batch["query_responses"], batch["query_response_mask"]
        else:
            side, self.tokenizer.padding_side = self.tokenizer.padding_side, "right"
            try:
                enc = self.tokenizer(self._texts(batch), return_tensors="pt", padding=True, add_special_tokens=False)
            finally:
                self.tokenizer.padding_side = side
            ids, mask = enc["input_ids"], enc["attention_mask"]
        ids, mask = ids.to(device), mask.to(device)
        scores = []
        for i in range(0, ids.shape[0], self.batch_size):
            scores.append(self._score_rows(ids[i:i + self.batch_size], mask[i:i + self.batch_size]))
        return torch.cat(scores).to(batch["scores_device"])

    def _score_rows(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """One score per row; a prefix every row shares runs once (``share_prompt_prefix``) when the model keeps a
        KV cache. The classifier reads its last non-pad position among the inputs it is given, then the rest."""
        shared = prefix_length_to_share(ids, mask) if self.share_prompt_prefix else 0
        cache = None
        if shared:
            split = split_shared_prefix(ids, mask, shared)
            cache = prefix_cache(self.model, split)
        if cache is not None:
            return forward_after_prefix(self.model, split, cache).logits[:, 0].float()
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        return self.model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, 0].float()


class CallableReward:
    """Wrap ``fn(prompts, completions, completion_ids=..., trainer_state=..., **dataset_columns)``."""

    def __init__(self, fn: Callable):
        self.fn, self.name = fn, _name(fn)

    def __call__(self, batch: dict[str, Any]) -> torch.Tensor:
        n = len(batch["prompts"])
        out = self.fn(prompts=batch["prompts"], completions=batch["completions"],
                      completion_ids=batch["completion_ids"], trainer_state=batch.get("trainer_state"),
                      **batch.get("columns", {}))
        out = list(out) if not isinstance(out, torch.Tensor) else out.flatten().tolist()
        if len(out) != n:
            raise ValueError(f"Reward function {self.name!r} returned {len(out)} rewards for {n} completions.")
        bad = [i for i, r in enumerate(out) if r is None or not math.isfinite(float(r))]
        if bad:
            raise ValueError(
                f"Reward function {self.name!r} returned non-finite rewards (NaN, inf or None) at positions "
                f"{bad[:10]}: {[out[i] for i in bad[:10]]}."
            )
        return torch.tensor([float(r) for r in out], dtype=torch.float32, device=batch["scores_device"])


def build_reward_sources(reward_model, policy_tokenizer, reward_processing_classes=None, batch_size: int = 64):
    """Normalise ``reward_model`` (one or a list) into reward sources aligned with their tokenizers."""
    models = reward_model if isinstance(reward_model, (list, tuple)) else [reward_model]
    if not models or any(m is None for m in models):
        raise ValueError("PPOTrainer needs a `reward_model`: a sequence-classification model or a reward callable.")
    tokenizers = reward_processing_classes
    if not isinstance(tokenizers, (list, tuple)):
        tokenizers = [tokenizers] * len(models) if len(models) == 1 or tokenizers is None else None
        if tokenizers is None:
            raise ValueError("With several reward models, pass `reward_processing_classes` as a list (None entries "
                             "for callables and models sharing the policy tokenizer).")
    if len(tokenizers) != len(models):
        raise ValueError(f"{len(tokenizers)} reward_processing_classes for {len(models)} reward models.")
    sources = []
    for m, tok in zip(models, tokenizers):
        if isinstance(m, torch.nn.Module):
            sources.append(ModelReward(m, policy_tokenizer, tok, batch_size))
        elif callable(m):
            sources.append(CallableReward(m))
        else:
            raise TypeError(f"Reward source {m!r} is neither a model nor a callable.")
    return sources
