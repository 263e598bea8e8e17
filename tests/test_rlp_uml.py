"""UML: the multi-view information-bottleneck loss against hand-computed values, and the plugin in the reward
trainer (λ = 0 is exactly no plugin; λ > 0 trains encoder, critic and backbone; the sample stream resumes)."""

import math

import pytest
import torch
from datasets import Dataset

from icegrt_trl import GRMRewardModel, RewardTrainer
from icegrt_trl.rlp import UMLLoss, mib_loss
from icegrt_trl.rlp.uml import gaussian_log_prob
from icegrt_trl.testbed import tiny_causal_lm

SMALL = dict(hidden_size=32, num_layers=2)


class ConstantCritic(torch.nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, x):
        return torch.full((x.shape[0], 1), self.value)


def test_gaussian_log_prob_hand_computed():
    z, mu, sigma = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 2.0]])
    expected = (-0.5 - 0.5 * math.log(2 * math.pi)) + (-math.log(2.0) - 0.5 * math.log(2 * math.pi))
    assert gaussian_log_prob(z, mu, sigma).item() == pytest.approx(expected)


def test_mib_loss_hand_computed():
    mu, sigma = torch.zeros(4, 3), torch.ones(4, 3)
    # identical view distributions: SKL = 0 exactly; a critic that says 0 everywhere: I_JSD = −2·log 2
    loss, m = mib_loss(mu, sigma, mu, sigma, ConstantCritic(0.0), beta=1.0, generator=torch.Generator().manual_seed(0))
    assert m["uml/skl"] == 0.0 and m["uml/mi_jsd"] == pytest.approx(-2 * math.log(2))
    assert loss.item() == pytest.approx(2 * math.log(2))
    # different view distributions: SKL > 0 and scaled by β
    mu2 = mu + 1.0
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    _, m1 = mib_loss(mu, sigma, mu2, sigma, ConstantCritic(0.0), beta=1.0, generator=g())
    l2, m2 = mib_loss(mu, sigma, mu2, sigma, ConstantCritic(0.0), beta=2.0, generator=g())
    assert m1["uml/skl"] > 0 and m1["uml/skl"] == pytest.approx(m2["uml/skl"])
    assert l2.item() == pytest.approx(-m2["uml/mi_jsd"] + 2.0 * m2["uml/skl"])
    # expected SKL of N(0,1) vs N(1,1) per dimension is 1/2 (both directions), 3 dims → 1.5; the estimate is noisy
    # with 4 samples, so check the mean over many draws
    many = [mib_loss(mu, sigma, mu2, sigma, ConstantCritic(0.0), 1.0,
                     torch.Generator().manual_seed(s))[1]["uml/skl"] for s in range(300)]
    assert sum(many) / len(many) == pytest.approx(1.5, abs=0.1)


def _samples(n_prompts=16, k=3):
    prompts = [f"sort {i % 10} {(i * 3) % 10} :" for i in range(n_prompts)]
    comps = [[f" {(i + j) % 10} {(i * 3) % 10}" for j in range(k)] for i in range(n_prompts)]
    return Dataset.from_dict({"prompt": prompts, "completions": comps})


def _grm(tok):
    return GRMRewardModel.from_causal_lm(tiny_causal_lm("llama", tok, **SMALL), head_type="linear")


def _trainer(tok, args, data, plugins):
    return RewardTrainer(model=_grm(tok), args=args, train_dataset=data, processing_class=tok, loss_plugins=plugins)


def test_lam_zero_trains_exactly_as_without_the_plugin(reward_tok, reward_data, reward_args, tmp_path):
    plain = _trainer(reward_tok, reward_args(output_dir=str(tmp_path / "a")), reward_data["preferences"], [])
    plain.train()
    zero = _trainer(reward_tok, reward_args(output_dir=str(tmp_path / "b")), reward_data["preferences"],
                    [UMLLoss(_samples(), lam=0.0)])
    zero.train()
    a = [h["loss"] for h in plain.state.log_history if "loss" in h]
    b = [h["loss"] for h in zero.state.log_history if "loss" in h]
    assert a == b
    assert all(torch.equal(p, q) for p, q in zip(plain.model.parameters(), zero.model.parameters()))


def test_uml_trains_encoder_critic_and_backbone_and_resumes_its_stream(reward_tok, reward_data, reward_args,
                                                                       tmp_path):
    uml = UMLLoss(_samples(), lam=0.5, beta_warmup_steps=4, z_dim=8, mlp_width=16, batch_size=4)
    args = reward_args(output_dir=str(tmp_path / "uml"), max_steps=4, save_strategy="steps", save_steps=2)
    trainer = _trainer(reward_tok, args, reward_data["preferences"], [uml])
    enc = [p.detach().clone() for p in uml.parameters()]
    trainer.train()
    log = trainer.state.log_history[0]
    assert {"uml/mi_jsd", "uml/skl", "uml/beta", "uml/loss"} <= set(log)
    assert log["uml/beta"] == pytest.approx(1e-3)  # start of the warm-up
    assert trainer.state.log_history[3]["uml/beta"] == pytest.approx(10 ** (-3 + 3 * 3 / 4))  # log-linear
    assert any(not torch.equal(a, b) for a, b in zip(enc, uml.parameters()))  # encoder/critic trained
    assert int(uml.consumed) == 4 * 4 and int(uml.steps) == 4
    # resume from checkpoint-2: the plugin comes back with its parameters and its position in the sample stream
    again = UMLLoss(_samples(), lam=0.5, beta_warmup_steps=4, z_dim=8, mlp_width=16, batch_size=4)
    resumed = _trainer(reward_tok, reward_args(output_dir=str(tmp_path / "r"), max_steps=4), reward_data["preferences"],
                       [again])
    resumed.train(resume_from_checkpoint=str(tmp_path / "uml" / "checkpoint-2"))
    assert int(again.consumed) == 16 and int(again.steps) == 4
    a = [h["uml/mi_jsd"] for h in trainer.state.log_history if "uml/mi_jsd" in h][2:]
    b = [h["uml/mi_jsd"] for h in resumed.state.log_history if "uml/mi_jsd" in h][-2:]
    assert b == pytest.approx(a, rel=1e-4)


def test_uml_needs_two_samples_per_prompt():
    bad = Dataset.from_dict({"prompt": ["a", "b"], "completions": [["x", "y"], ["z"]]})
    with pytest.raises(ValueError, match=r"two different samples of each prompt .*1 prompt\(s\) have fewer than 2 "
                                         r"completions \(first: row 1\)"):
        UMLLoss(bad)
    with pytest.raises(ValueError, match="UMLLoss needs `samples`"):
        UMLLoss()
