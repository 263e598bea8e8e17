"""icegrt-trl: PPO-based RLHF on current TRL with the ICE-GRT, Qwen, GRM and RLP training tricks."""

__version__ = "0.1.0"
