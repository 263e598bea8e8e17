"""Dataset preparation: prompts (text or chat) or pre-tokenized ``input_ids``; left truncation; ptx rows."""

from __future__ import annotations

import warnings

from datasets import Dataset
from transformers import PreTrainedTokenizerBase


def is_conversational_prompt(prompt) -> bool:
    return isinstance(prompt, list) and (not prompt or isinstance(prompt[0], dict))


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
                ids = tokenizer(p, add_special_tokens=False)["input_ids"]
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
