"""An offline synthetic RLHF world with a hidden gold reward (see docs/testbed.md)."""

from .datasets import TestbedConfig, label_agreement, make_datasets
from .judge import generate_completions, mean_gold_score, render_prompts, win_rate_of_completions
from .models import ARCHITECTURES, count_parameters, tiny_causal_lm, tiny_config, tiny_sequence_classifier
from .tasks import TASKS, gold_reward, parse_prompt, score_answer
from .tokenizer import build_tokenizer

__all__ = [
    "ARCHITECTURES", "TASKS", "TestbedConfig", "build_tokenizer", "count_parameters", "generate_completions",
    "gold_reward", "label_agreement", "make_datasets", "mean_gold_score", "parse_prompt", "render_prompts",
    "score_answer", "tiny_causal_lm", "tiny_config", "tiny_sequence_classifier",
    "win_rate_of_completions",
]
