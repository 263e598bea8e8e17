"""Shared fixtures. Append yours; keep them session-scoped when they train something."""


import pytest
import torch


# ---------------------------------------------------------------- PPO (tests/test_ppo_*.py)
@pytest.fixture(scope="session")
def sft_policy_dir(tmp_path_factory):
    """A tiny Llama SFT-trained on the testbed (~10 s, once per session), saved with its tokenizer."""
    from icegrt_trl.testbed.sft import train_sft_policy

    torch.set_num_threads(2)
    return train_sft_policy(tmp_path_factory.mktemp("sft_policy") / "model", seed=0)


@pytest.fixture
def sft_policy(sft_policy_dir):
    """A fresh copy of the SFT policy and its tokenizer for each test."""
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    return AutoModelForCausalLM.from_pretrained(sft_policy_dir), PreTrainedTokenizerFast.from_pretrained(sft_policy_dir)


# ---------------------------------------------------------------- reward (tests/test_reward_*.py)
@pytest.fixture(scope="session")
def reward_tok():
    from icegrt_trl.testbed import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="session")
def reward_data():
    """Small testbed splits for reward-trainer tests (64 training pairs, 32 per eval split)."""
    from icegrt_trl.testbed import make_datasets

    return make_datasets(num_preferences=64, num_sft=8, num_pmp=64, num_pref_eval=32, num_unlabeled=16, num_eval=4)


@pytest.fixture
def reward_args(tmp_path):
    """Factory of fast CPU RewardConfigs (2–4 steps, no checkpoints, no progress bars)."""
    from icegrt_trl import RewardConfig

    def make(**overrides):
        base = dict(output_dir=str(tmp_path / "rm"), per_device_train_batch_size=8, max_steps=3, learning_rate=1e-3,
                    logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, bf16=False, seed=3,
                    max_length=32, gradient_checkpointing=False, disable_tqdm=True)
        base.update(overrides)
        return RewardConfig(**base)

    return make
