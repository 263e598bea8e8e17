"""UML — unsupervised multi-view learning of the reward model's representation on the policy's own samples
(RLP, Lang et al. 2024, §3.2), as a ``reward_loss`` plugin of the reward trainer.

Two views of an instruction are the instruction with two different policy samples, v1 = (x, y1), v2 = (x, y2). An
encoder on the reward model's final-layer representation (at the last non-pad token) gives p(z|v) = N(μ(v),
diag σ²(v)), μ and σ three-layer MLPs. The multi-view information bottleneck (Federici et al. 2020) loss

    L_M = −I_JSD(z1; z2) + β · D_SKL(p(z|v1) ‖ p(z|v2))

keeps what the two views share and drops what they do not: I by the Jensen–Shannon estimator with a critic T on
[z1, z2] and shuffled negatives (z1 rolled by one in the batch), D_SKL the mean of both KL directions estimated on
the samples. The reward trainer adds λ·L_M (λ = 0.5 in the paper) to the Bradley–Terry loss on the labelled pairs;
the backbone is shared, the encoder and critic are this plugin's parameters (they train with the reward model and
are saved in checkpoints, as is the position in the sample stream). β is annealed from ``beta_start`` to ``beta``
over ``beta_warmup_steps`` optimizer steps (log-linearly; Federici: 1e-3 → 1). With ``lam=0`` nothing is computed and
the reward model trains exactly as without the plugin.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from datasets import Dataset
from torch import nn

from ..plugins.registry import register_plugin
from ..reward.plugins import PluginLoss, RewardLossContext, RewardLossPlugin, unwrap_peft


def mlp(d_in: int, width: int, d_out: int) -> nn.Sequential:
    """Three linear layers with ReLUs between them."""
    return nn.Sequential(nn.Linear(d_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, d_out))


def gaussian_log_prob(z: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """log N(z; μ, diag σ²), summed over the dimensions."""
    return (-0.5 * ((z - mu) / sigma).square() - sigma.log() - 0.5 * math.log(2 * math.pi)).sum(-1)


def mib_loss(mu1, sigma1, mu2, sigma2, critic: nn.Module, beta: float, generator: torch.Generator | None = None):
    """−I_JSD(z1; z2) + β·SKL for a batch of view pairs (``mu*``/``sigma*``: ``[B, z_dim]``). Returns (loss, metrics).

    Needs B ≥ 2 (the negatives are the other rows of the batch)."""
    eps1 = torch.randn(mu1.shape, generator=generator, device="cpu").to(mu1)
    eps2 = torch.randn(mu2.shape, generator=generator, device="cpu").to(mu2)
    z1, z2 = mu1 + sigma1 * eps1, mu2 + sigma2 * eps2
    pos = critic(torch.cat([z1, z2], -1)).squeeze(-1)
    neg = critic(torch.cat([torch.roll(z1, 1, 0), z2], -1)).squeeze(-1)
    mi = -F.softplus(-pos).mean() - F.softplus(neg).mean()
    skl = 0.5 * ((gaussian_log_prob(z1, mu1, sigma1) - gaussian_log_prob(z1, mu2, sigma2))
                 + (gaussian_log_prob(z2, mu2, sigma2) - gaussian_log_prob(z2, mu1, sigma1))).mean()
    loss = -mi + beta * skl
    return loss, {"uml/mi_jsd": mi.item(), "uml/skl": skl.item(), "uml/beta": beta}


def pooled_representation(outputs, attention_mask: torch.Tensor) -> torch.Tensor:
    """The final-layer hidden state at the last non-pad token (GRM models and TRL sequence classifiers)."""
    hidden = getattr(outputs, "last_hidden_state", None)
    if hidden is None:
        states = getattr(outputs, "hidden_states", None)
        if not states:
            raise ValueError("UML needs the reward model's hidden states; the model returned none.")
        hidden = states[-1]
    idx = torch.arange(attention_mask.shape[1], device=attention_mask.device).expand_as(attention_mask)
    last = (idx * attention_mask.long()).amax(1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


@register_plugin
class UMLLoss(RewardLossPlugin):
    """``reward_loss`` plugin ``"uml"``; ``samples`` is a Dataset of policy samples: ``prompt`` and ``completions``
    (≥ 2 per prompt, strings or assistant-message lists)."""

    name = "uml"

    def __init__(self, samples: Dataset | None = None, lam: float = 0.5, beta: float = 1.0, beta_start: float = 1e-3,
                 beta_warmup_steps: int = 0, z_dim: int = 64, mlp_width: int = 256, batch_size: int | None = None,
                 seed: int = 0):
        super().__init__()
        if lam < 0 or beta < 0 or beta_start <= 0:
            raise ValueError(f"UML needs lam >= 0, beta >= 0 and beta_start > 0 (got {lam}, {beta}, {beta_start}).")
        if samples is None:
            raise ValueError("UMLLoss needs `samples`: a Dataset of the policy's samples with 'prompt' and "
                             "'completions' (>= 2 per prompt); the rlp stage builds it from the PPO policy.")
        missing = [c for c in ("prompt", "completions") if c not in samples.column_names]
        if missing:
            raise ValueError(f"UMLLoss samples need columns 'prompt' and 'completions'; missing {missing}.")
        short = [i for i, c in enumerate(samples["completions"]) if len(c) < 2]
        if short:
            raise ValueError(f"UML needs two different samples of each prompt (two views); {len(short)} prompt(s) "
                             f"have fewer than 2 completions (first: row {short[0]}). Sample n >= 2 per prompt.")
        self.samples, self.lam, self.beta, self.beta_start = samples, float(lam), float(beta), float(beta_start)
        self.beta_warmup_steps, self.z_dim, self.mlp_width = int(beta_warmup_steps), int(z_dim), int(mlp_width)
        self.batch_size, self.seed = batch_size, int(seed)
        self.register_buffer("consumed", torch.tensor(0))  # prompts drawn so far: the stream resumes here
        self.register_buffer("steps", torch.tensor(0))  # training steps, for the β warm-up
        self.encoder_mu = self.encoder_sigma = self.critic = None
        self._tokenizer, self._max_length = None, None

    @classmethod
    def from_config(cls, config=None, **overrides):
        kw = {"seed": config.seed} if config is not None else {}
        return cls(**{**kw, **overrides})

    def describe(self) -> str:
        return (f"uml(lam={self.lam}, beta={self.beta}, beta_warmup_steps={self.beta_warmup_steps}, "
                f"z_dim={self.z_dim}, samples={len(self.samples)} prompts)")

    def setup(self, trainer) -> None:
        base = unwrap_peft(trainer.model)
        config = getattr(base, "config", None)
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        hidden = getattr(getattr(config, "lm_config", None), "hidden_size", None) or getattr(text, "hidden_size")
        g = torch.Generator().manual_seed(self.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
            self.encoder_mu = mlp(hidden, self.mlp_width, self.z_dim)
            self.encoder_sigma = mlp(hidden, self.mlp_width, self.z_dim)
            self.critic = mlp(2 * self.z_dim, self.mlp_width, 1)
        self._tokenizer, self._max_length = trainer.processing_class, trainer.args.max_length
        self.batch_size = self.batch_size or trainer.args.per_device_train_batch_size

    def forward_kwargs(self, trainer, mode: str) -> dict:
        return {}

    def current_beta(self) -> float:
        if self.beta_warmup_steps <= 0 or self.beta == 0:
            return self.beta
        frac = min(int(self.steps) / self.beta_warmup_steps, 1.0)
        return float(math.exp(math.log(self.beta_start) + frac * (math.log(self.beta) - math.log(self.beta_start))))

    def _views(self, device) -> tuple[dict, dict]:
        """The next batch of prompts (a seeded shuffled stream), each with two different samples."""
        from ..reward.evaluation import _texts

        n, k0 = len(self.samples), int(self.consumed)
        rows = []
        for k in range(k0, k0 + self.batch_size):
            epoch, pos = divmod(k, n)
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch))
            rows.append(int(order[pos]))
        self.consumed += self.batch_size
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + k0)
        prompts, first, second = [], [], []
        for r in rows:
            comps = self.samples[r]["completions"]
            i, j = torch.randperm(len(comps), generator=g)[:2].tolist()
            prompts.append(self.samples[r]["prompt"])
            first.append(comps[i])
            second.append(comps[j])
        tok = self._tokenizer
        side, tok.padding_side = tok.padding_side, "right"
        try:
            enc = [tok(_texts(tok, prompts, view), return_tensors="pt", padding=True, add_special_tokens=False,
                       truncation=self._max_length is not None, max_length=self._max_length).to(device)
                   for view in (first, second)]
        finally:
            tok.padding_side = side
        return enc[0], enc[1]

    def compute_loss(self, ctx: RewardLossContext) -> PluginLoss:
        if self.lam == 0 or ctx.mode != "train":
            return PluginLoss()
        device = ctx.input_ids.device
        v1, v2 = self._views(device)
        stats = []
        for view in (v1, v2):
            out = ctx.model(input_ids=view["input_ids"], attention_mask=view["attention_mask"],
                            output_hidden_states=True, use_cache=False)
            h = pooled_representation(out, view["attention_mask"]).float()
            stats.append((self.encoder_mu(h), F.softplus(self.encoder_sigma(h)) + 1e-7))
        beta = self.current_beta()
        generator = torch.Generator().manual_seed(self.seed * 7919 + int(self.steps))
        loss, metrics = mib_loss(stats[0][0], stats[0][1], stats[1][0], stats[1][1], self.critic, beta, generator)
        self.steps += 1
        metrics["uml/loss"] = loss.item()
        return PluginLoss(loss=self.lam * loss, metrics=metrics)
