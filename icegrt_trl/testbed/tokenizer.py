"""A word-level tokenizer for the testbed, built locally with `tokenizers` (nothing is downloaded).

The vocabulary is tiny (digits, task words, chat markers), so tiny models learn the tasks quickly, yet the
object is a real `PreTrainedTokenizerFast` with pad/eos tokens and a chat template: it saves and reloads
like any Hub tokenizer, and TRL's trainers use it unchanged.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, EOS, BOS, UNK = "<pad>", "<eos>", "<bos>", "<unk>"
USER, ASSISTANT, SYSTEM = "<|user|>", "<|assistant|>", "<|system|>"
SPECIAL_TOKENS = [PAD, EOS, BOS, UNK, USER, ASSISTANT, SYSTEM]
DIGITS = [str(d) for d in range(10)]
# Task words first, then a few filler words that appear in instructions and in off-task answers.
WORDS = ["sort", "reverse", "copy", "max", "min", "sum", "digits", "the", "please", ":", "=", ",", "answer",
         "is", "I", "don't", "know", "ok", "yes", "no"]

# The chat template renders each message as `<|role|> content`, ends assistant turns with EOS, and opens
# an assistant turn when `add_generation_prompt=True`. Spaces keep the whitespace pre-tokenizer happy.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|> ' + message['content'] + ' ' }}"
    "{% if message['role'] == 'assistant' %}{{ '<eos> ' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|> ' }}{% endif %}"
)


def build_tokenizer(model_max_length: int = 128) -> PreTrainedTokenizerFast:
    """Build the testbed tokenizer: word level, whitespace split, words joined by single spaces on decode."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + DIGITS + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # Metaspace-free decoding: WordPiece decoder with an unused prefix joins tokens with spaces.
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        eos_token=EOS,
        bos_token=BOS,
        unk_token=UNK,
        additional_special_tokens=[USER, ASSISTANT, SYSTEM],
        model_max_length=model_max_length,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
