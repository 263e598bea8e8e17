"""Dataset preparation: prompts (text or chat) or pre-tokenized ``input_ids``; left truncation; ptx rows."""

from __future__ import annotations

import warnings

import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerBase


def is_conversational_prompt(prompt) -> bool:
    return isinstance(prompt, list) and (not prompt or isinstance(prompt[0], dict))


def left_pad(sequences: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of token-id lists left-padded to one width, as generation wants prompts."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(sequences):
        ids[i, width - len(s):] = torch.tensor(list(s), dtype=torch.long)
        mask[i, width - len(s):] = 1
    return ids, mask


def special_tokens_added(tokenizer: PreTrainedTokenizerBase) -> tuple[bool, bool]:
    """Whether ``tokenizer(text)`` adds a BOS at the start and an EOS at the end (Llama-family tokenizers add BOS)."""
    cached = getattr(tokenizer, "_icegrt_special_tokens_added", None)
    if cached is not None:
        return cached
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    bos = tokenizer.bos_token_id is not None and len(full) > len(plain) and full[0] == tokenizer.bos_token_id
    eos = tokenizer.eos_token_id is not None and len(full) > len(plain) and full[-1] == tokenizer.eos_token_id \
        and (not plain or plain[-1] != tokenizer.eos_token_id)
    try:
        tokenizer._icegrt_special_tokens_added = (bos, eos)
    except AttributeError:  # pragma: no cover - tokenizers that refuse new attributes
        pass
    return bos, eos


def encode_text_prompt(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of a plain-text prompt as the model saw text in training: with the BOS the tokenizer adds (TRL's
    SFTTrainer tokenizes with special tokens), never with an EOS (a prompt does not end the sequence)."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    bos, _ = special_tokens_added(tokenizer)
    return ([tokenizer.bos_token_id] + ids) if bos and (not ids or ids[0] != tokenizer.bos_token_id) else ids


def decode_completions(tokenizer: PreTrainedTokenizerBase, prompt_ids: list[list[int]],
                       completion_ids: list[list[int]]) -> list[str]:
    """The text each completion adds to its prompt, exactly as the policy wrote it.

    Decoding the completion's tokens alone loses or invents a leading space with SentencePiece and word-level
    tokenizers; decoding prompt + completion and removing the decoded prompt keeps what was written.
    """
    out = []
    for p, c in zip(prompt_ids, completion_ids):
        prefix = tokenizer.decode(p, skip_special_tokens=True)
        full = tokenizer.decode(list(p) + list(c), skip_special_tokens=True)
        out.append(full[len(prefix):] if full.startswith(prefix) else tokenizer.decode(c, skip_special_tokens=True))
    return out


def prepare_prompt_dataset(dataset: Dataset, tokenizer: PreTrainedTokenizerBase, max_prompt_length: int | None,
                           num_proc: int | None = None, name: str = "train_dataset") -> Dataset:
    """Add ``input_ids`` (and ``prompt`` text when only ids are given); truncate long prompts from the left."""
    cols = dataset.column_names
    if "prompt" not in cols and "input_ids" not in cols:
        raise ValueError(
            f"{name} needs a `prompt` column (text or conversational messages) or pre-tokenized `input_ids`; "
            f"found columns {cols}."
        )
    if "input_ids" not in cols:
        def tokenize(row):
            p = row["prompt"]
            if is_conversational_prompt(p):
                ids = tokenizer.apply_chat_template(p, tokenize=True, add_generation_prompt=True, return_dict=False)
            else:
                ids = encode_text_prompt(tokenizer, p)
            return {"input_ids": list(ids)}

        dataset = dataset.map(tokenize, num_proc=num_proc, desc=f"Tokenizing {name}")
    if "prompt" not in cols:
        dataset = dataset.map(lambda r: {"prompt": tokenizer.decode(r["input_ids"], skip_special_tokens=True)},
                              num_proc=num_proc)
    if max_prompt_length is not None:
        lengths = [len(x) for x in dataset["input_ids"]]
        too_long = sum(n > max_prompt_length for n in lengths)
        if too_long:
            warnings.warn(
                f"{too_long} of {len(dataset)} prompts in {name} are longer than max_prompt_length="
                f"{max_prompt_length} tokens; they were truncated from the left.", stacklevel=3)
            dataset = dataset.map(lambda r: {"input_ids": r["input_ids"][-max_prompt_length:]}, num_proc=num_proc)
    if min(len(x) for x in dataset["input_ids"]) == 0:
        raise ValueError(f"{name} contains empty prompts.")
    return dataset


def prepare_ptx_rows(dataset: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int) -> list[list[int]]:
    """Token ids for the ptx loss from ``text``, ``prompt``+``completion``, ``messages`` or ``input_ids``."""
    cols, eos = dataset.column_names, tokenizer.eos_token or ""
    if "input_ids" in cols:
        rows = list(dataset["input_ids"])
    elif "text" in cols:
        rows = [tokenizer(t + eos, add_special_tokens=False)["input_ids"] for t in dataset["text"]]
    elif "messages" in cols:
        rows = [tokenizer.apply_chat_template(m, tokenize=True, return_dict=False) for m in dataset["messages"]]
    elif "prompt" in cols and "completion" in cols:
        rows = []
        for p, c in zip(dataset["prompt"], dataset["completion"]):
            if is_conversational_prompt(p):
                rows.append(tokenizer.apply_chat_template(p + c, tokenize=True, return_dict=False))
            else:
                rows.append(tokenizer(p + c + eos, add_special_tokens=False)["input_ids"])
    else:
        raise ValueError(f"ptx_dataset needs `text`, `messages`, `prompt`+`completion` or `input_ids`; found {cols}.")
    return [list(r)[:max_length] for r in rows if len(r) > 1]
