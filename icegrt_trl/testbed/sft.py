"""The default recipe's SFT of a testbed policy, as one function for tests and benchmarks."""

from __future__ import annotations

from pathlib import Path


def train_sft_policy(folder: str | Path, seed: int = 0, arch: str = "llama", sft_data=None) -> Path:
    """SFT a tiny `arch` model on the testbed's demonstrations with `recipes/tiny-offline.yaml`'s SFT settings
    (4 epochs, lr 3e-3 cosine, batch 32; ~10 s on 2 cores) and save it with its tokenizer to `folder`.

    An existing save in `folder` is reused. `sft_data` defaults to `make_datasets(seed=seed)["sft"]`.
    """
    from trl import SFTConfig, SFTTrainer

    from .datasets import make_datasets
    from .models import tiny_causal_lm
    from .tokenizer import build_tokenizer

    folder = Path(folder)
    if (folder / "config.json").is_file():
        return folder
    tok = build_tokenizer()
    model = tiny_causal_lm(arch, tok, seed=seed)
    args = SFTConfig(output_dir=str(folder / "run"), per_device_train_batch_size=32, num_train_epochs=4,
                     learning_rate=3e-3, lr_scheduler_type="cosine", warmup_steps=10, max_length=64, use_cpu=True,
                     report_to=[], save_strategy="no", logging_strategy="no", bf16=False, seed=seed,
                     gradient_checkpointing=False, disable_tqdm=True)
    data = sft_data if sft_data is not None else make_datasets(seed=seed)["sft"]
    SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok).train()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
