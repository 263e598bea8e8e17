"""ptx loss (Qwen's "pretrained gradient", InstructGPT's PPO-ptx): ``ptx_coef`` × next-token NLL on SFT or
pretraining text, added to each policy update to limit the alignment tax.

The plugin owns an endless, seeded stream of batches from ``ptx_dataset`` and counts what it consumed, so a
resumed run continues the stream where the checkpoint left it. With several processes each takes every
``world``-th row of the one shuffled stream (offset by its rank), so processes train on different ptx rows and the
count stays the same on all of them.
"""

from __future__ import annotations

import torch

from ...plugins.registry import register_plugin
from .base import PPOPlugin


@register_plugin
class PtxLoss(PPOPlugin):
    kind = "ptx"
    name = "nll"

    def __init__(self, coef: float = 0.0, batch_size: int = 8, seed: int = 0, **_):
        self.coef, self.batch_size, self.seed = float(coef), int(batch_size), int(seed)
        self.consumed = 0
        self.rows: list[list[int]] | None = None
        self._order: list[int] = []
        self.rank, self.world = 0, 1

    @classmethod
    def from_config(cls, config=None, **overrides):
        kw = {"coef": config.ptx_coef, "seed": config.seed,
              "batch_size": config.ptx_batch_size or config.local_micro_batch_size} if config is not None else {}
        return cls(**{**kw, **overrides})

    def set_data(self, rows: list[list[int]], rank: int = 0, world: int = 1) -> None:
        if not rows:
            raise ValueError("ptx_dataset is empty.")
        self.rows, self.rank, self.world = rows, int(rank), int(world)

    def _index(self, k: int) -> int:
        n = len(self.rows)
        epoch, pos = divmod(k, n)
        if epoch != getattr(self, "_epoch", None):
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._order, self._epoch = torch.randperm(n, generator=g).tolist(), epoch
        return self._order[pos]

    def next_batch(self, pad_token_id: int, device) -> dict[str, torch.Tensor]:
        seqs = [self.rows[self._index((self.consumed + i) * self.world + self.rank)] for i in range(self.batch_size)]
        self.consumed += self.batch_size
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):  # right padding: positions start at 0 without position ids
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}

    def state_dict(self):
        return {"consumed": self.consumed}

    def load_state_dict(self, state):
        self.consumed = int(state["consumed"])
