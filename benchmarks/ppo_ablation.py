"""Ablation of the ICE-GRT/Qwen PPO knobs on the testbed (gold reward as the reward function).

    python benchmarks/ppo_ablation.py --seeds 0 1 2 --steps 200 --out benchmarks/results/ppo_ablation.json

Each arm starts from the same SFT policy (trained once per seed with the recipe's SFT settings) and runs PPO with
one knob changed from the baseline; the figure is the greedy gold score on 200 held-out eval prompts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

ARMS = {
    "baseline": {},
    "reward_norm": {"reward_scaling": "running_meanstd"},
    "adaptive_kl": {"kl_controller": "adaptive", "kl_target": 0.5, "kl_horizon": 1000},
    "no_adv_norm": {"advantage_normalization": "none"},
    "value_warmup": {"value_warmup_steps": 50},  # Qwen: 50
    "value_head_on_policy": {"value_head_on_policy": True},  # one trunk for policy and value (OpenAI, trlx)
}


def sft_policy(seed: int, folder: Path):
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from icegrt_trl.testbed.sft import train_sft_policy

    train_sft_policy(folder, seed=seed)
    return AutoModelForCausalLM.from_pretrained(folder), PreTrainedTokenizerFast.from_pretrained(folder)


def reward_model(seed: int, work: Path, sft_folder: Path):
    """The default recipe's reward model: GRM (sft regularizer) from the SFT policy on the noisy pairs."""
    from icegrt_trl import GRMRewardModel, RewardConfig, RewardTrainer
    from icegrt_trl.testbed import make_datasets

    folder = work / f"rm-{seed}"
    if not (folder / "config.json").exists():
        model, tok = sft_policy(seed, sft_folder)
        rm = GRMRewardModel.from_causal_lm(model, head_type="mlp")
        args = RewardConfig(output_dir=str(folder / "run"), grm_regularizer="sft", grm_alpha=0.01, grm_beta=0.1,
                            learning_rate=1e-3, num_train_epochs=3, per_device_train_batch_size=32, max_length=64,
                            use_cpu=True, bf16=False, gradient_checkpointing=False, report_to=[], save_strategy="no",
                            logging_strategy="no", disable_tqdm=True, seed=seed)
        trainer = RewardTrainer(model=rm, args=args, train_dataset=make_datasets(seed=seed)["preferences"],
                                processing_class=tok)
        trainer.train()
        trainer.save_model(str(folder))
    return GRMRewardModel.from_pretrained(folder, head_type="mlp")


def run_arm(arm: str, seed: int, steps: int, work: Path, reward: str = "gold") -> dict:
    from icegrt_trl import PPOConfig, PPOTrainer
    from icegrt_trl.testbed import gold_reward, make_datasets, mean_gold_score

    data = make_datasets(seed=seed)
    scorer = gold_reward if reward == "gold" else reward_model(seed, work, work / f"sft-{seed}")
    model, tok = sft_policy(seed, work / f"sft-{seed}")
    before = mean_gold_score(model, tok, data["eval"]["prompt"])
    args = PPOConfig(output_dir=str(work / f"{arm}-{seed}"), use_cpu=True, bf16=False, report_to=[],
                     per_device_train_batch_size=64, num_mini_batches=2, gradient_accumulation_steps=1, num_ppo_epochs=2, max_steps=steps,
                     learning_rate=1e-4, value_learning_rate=1e-3, lr_scheduler_type="constant", response_length=12, temperature=1.0,
                     stop_token="eos", save_strategy="no", gradient_checkpointing=False, disable_tqdm=True,
                     num_sample_generations=0, logging_steps=4, seed=seed, **ARMS[arm])
    start = time.time()
    trainer = PPOTrainer(args=args, processing_class=tok, model=model, reward_model=scorer,
                         train_dataset=data["unlabeled"])
    trainer.train()
    after = mean_gold_score(model, tok, data["eval"]["prompt"])
    last = [h for h in trainer.state.log_history if "objective/kl" in h][-1]
    return {"arm": arm, "seed": seed, "reward": reward, "gold_before": before, "gold_after": after, "kl": last["objective/kl"],
            "seconds": round(time.time() - start, 1)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--arms", nargs="+", default=list(ARMS))
    ap.add_argument("--reward", choices=["gold", "rm"], default="gold",
                    help="PPO's reward: the gold reward (oracle) or the recipe's GRM reward model (learned, noisy)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="/tmp/ppo_ablation")
    ap.add_argument("--out", default="benchmarks/results/ppo_ablation.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rows = [run_arm(arm, seed, a.steps, Path(a.work), a.reward) for seed in a.seeds for arm in a.arms]
    summary = {}
    for arm in a.arms:
        r = [x for x in rows if x["arm"] == arm]
        deltas = [x["gold_after"] - x["gold_before"] for x in r]
        summary[arm] = {"gold_delta_mean": statistics.mean(deltas),
                        "gold_delta_std": statistics.stdev(deltas) if len(deltas) > 1 else 0.0,
                        "gold_after_mean": statistics.mean(x["gold_after"] for x in r),
                        "gold_after_std": statistics.stdev(x["gold_after"] for x in r) if len(r) > 1 else 0.0,
                        "kl_mean": statistics.mean(x["kl"] for x in r)}
        print(f"| {arm} | {statistics.mean(x['gold_before'] for x in r):.3f} | {summary[arm]['gold_after_mean']:.3f} ± "
              f"{summary[arm]['gold_after_std']:.3f} | {summary[arm]['gold_delta_mean']:+.3f} ± "
              f"{summary[arm]['gold_delta_std']:.3f} | {summary[arm]['kl_mean']:.2f} |")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"args": vars(a), "runs": rows, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
