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


PPO_CITATION = """@article{ouyang2022training,
    title   = {{Training language models to follow instructions with human feedback}},
    author  = {Long Ouyang and others},
    journal = {NeurIPS},
    year    = {2022}
}"""


def trl_card_header(trainer, output_dir: str | Path, dataset_name: str | None = None) -> Path:
    """TRL's model card (front matter, quick start, framework versions) for the PPO policy, via TRL's own
    ``generate_model_card``; our sections are appended to it."""
    import os

    from trl.trainer.utils import generate_model_card

    wrapper = trainer.accelerator.unwrap_model(trainer.model)
    base = getattr(wrapper.config, "_name_or_path", None)
    name = Path(output_dir).name
    card = generate_model_card(
        base_model=base if base and not os.path.isdir(base) else None, model_name=name,
        hub_model_id=trainer.args.hub_model_id or name, dataset_name=dataset_name,
        tags=["trl", "ppo", "icegrt-trl"], wandb_url=None, trackio_url=None, trainer_name="PPO",
        trainer_citation=PPO_CITATION, paper_title="Training language models to follow instructions with human "
        "feedback", paper_id="2203.02155")
    path = Path(output_dir) / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    card.save(str(path))
    return path


def write_ppo_model_card(trainer, output_dir: str | Path) -> Path:
    """The PPO policy's card: TRL's header, then base model, recipe, data, adapters, plugins with their state,
    settings, final metrics and how to reload the policy and value model."""
    path = Path(output_dir) / "README.md"
    if not path.is_file() or not path.read_text().startswith("---"):
        trl_card_header(trainer, output_dir, trainer.dataset_name)
    wrapper = trainer.accelerator.unwrap_model(trainer.model)
    value_adapter = wrapper.value_model.adapter
    last = {}
    for entry in trainer.state.log_history:
        last.update({k: v for k, v in entry.items() if isinstance(v, (int, float))})
    args = trainer.args
    lines = [
        f"- Base model: `{getattr(wrapper.config, '_name_or_path', '') or 'a local model'}`",
        f"- Recipe: `{args.recipe or 'none (Python API)'}`",
        f"- Data: `{trainer.dataset_name or 'a prompt dataset'}` ({len(trainer.train_dataset)} prompts)",
        f"- PEFT: `{trainer.is_peft}` (policy adapter `{trainer.policy_adapter}`, value adapter `{value_adapter}`)",
        "- Value head: `value_head.safetensors`" + (", value backbone: `value_model/`" if value_adapter is None
                                                  and not wrapper.value_model.shared else ""),
        "", "## Plugins", "",
    ]
    lines += [f"- {name}: `{type(p).__name__}` {json.dumps(p.state_dict())}" for name, p in trainer.plugins.items()]
    lines += ["", "## Settings", ""] + [f"- {k}: `{getattr(args, k)}`" for k in PPO_CARD_SETTINGS]
    lines += ["", f"## Final metrics (step {trainer.state.global_step})", ""]
    lines += [f"- {k}: {v:.4g}" if isinstance(v, float) else f"- {k}: {v}" for k, v in sorted(last.items())]
    lines += ["", "## Reload", "", "```python", "from icegrt_trl.ppo.checkpoints import load_trained",
              "policy, value_model, tokenizer = load_trained(\"<this folder or repo snapshot>\")",
              "# an adapter whose base was a local folder: load_trained(folder, base_model=\"<base id or folder>\")",
              "```"]
    return update_card_section(output_dir, "ppo", "\n".join(lines))


def stage_card_section(folder: str | Path, stage: str, recipe: str | None, dataset: str, figures: dict,
                       loader: str) -> Path:
    """The section every stage adds to its folder's card: recipe, data, final figures and the one-line loader."""
    lines = [f"## icegrt-trl `{stage}` stage", "", f"- Recipe: `{recipe or 'command line'}`", f"- Data: `{dataset}`",
             "", "| figure | value |", "| --- | --- |"]
    lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in figures.items()
              if isinstance(v, (int, float, str))]
    lines += ["", "Reload:", "", "```python", loader, "```"]
    return update_card_section(folder, f"stage-{stage}", "\n".join(lines))
