"""Model cards of both trainers (README.md next to the weights).

Each trainer owns sections of the card, written with :func:`update_card_section`: a section sits between HTML markers
and is replaced on rewrite, so a card can be refreshed (a later checkpoint, an evaluation) without losing the rest.
The reward trainer adds its sections to the card TRL writes; the PPO trainer writes a front matter and its own.
"""

from __future__ import annotations

import json
from pathlib import Path


def update_card_section(folder: str | Path, key: str, markdown: str) -> Path:
    """Insert or replace the section `key` of ``folder/README.md``, keeping everything else."""
    path = Path(folder) / "README.md"
    start, end = f"<!-- icegrt:{key} -->", f"<!-- /icegrt:{key} -->"
    block = f"{start}\n{markdown.strip()}\n{end}\n"
    text = path.read_text() if path.is_file() else ""
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1].lstrip("\n")
    else:
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


PPO_CARD_SETTINGS = ("learning_rate", "value_learning_rate", "num_ppo_epochs", "num_mini_batches",
                     "num_samples_per_prompt", "kl_coef", "kl_estimator", "kl_penalty", "cliprange", "cliprange_value",
                     "vf_coef", "gamma", "lam", "temperature", "top_p", "top_k", "response_length",
                     "value_warmup_steps", "ptx_coef")


def write_ppo_model_card(trainer, output_dir: str | Path) -> Path:
    """The PPO policy's card: base model, recipe, adapters, plugins with their state, settings, final metrics."""
    path = Path(output_dir) / "README.md"
    if not path.is_file() or not path.read_text().startswith("---"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("---\nlibrary_name: transformers\ntags: [trl, ppo, icegrt-trl, generated_from_trainer]\n"
                        "---\n\n# PPO policy trained with icegrt-trl\n")
    wrapper = trainer.accelerator.unwrap_model(trainer.model)
    value_adapter = wrapper.value_model.adapter
    last = {}
    for entry in trainer.state.log_history:
        last.update({k: v for k, v in entry.items() if isinstance(v, (int, float))})
    args = trainer.args
    lines = [
        f"- Base model: `{getattr(wrapper.config, '_name_or_path', '') or 'a local model'}`",
        f"- Recipe: `{args.recipe or 'none (Python API)'}`",
        f"- PEFT: `{trainer.is_peft}` (policy adapter `{trainer.policy_adapter}`, value adapter `{value_adapter}`)",
        "- Value head: `value_head.safetensors`" + (", value backbone: `value_model/`" if value_adapter is None else ""),
        "", "## Plugins", "",
    ]
    lines += [f"- {name}: `{type(p).__name__}` {json.dumps(p.state_dict())}" for name, p in trainer.plugins.items()]
    lines += ["", "## Settings", ""] + [f"- {k}: `{getattr(args, k)}`" for k in PPO_CARD_SETTINGS]
    lines += ["", f"## Final metrics (step {trainer.state.global_step})", ""]
    lines += [f"- {k}: {v:.4g}" if isinstance(v, float) else f"- {k}: {v}" for k, v in sorted(last.items())]
    return update_card_section(output_dir, "ppo", "\n".join(lines))
