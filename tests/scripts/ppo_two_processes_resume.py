"""Run by tests/test_ppo_distributed.py with `python -m torch.distributed.run --nproc_per_node 2` (gloo on the CPU;
`accelerate launch` starts the same processes).

Each rank trains an uninterrupted run (checkpoint every 3 optimizer steps: checkpoint-3 lies in the middle of a
rollout, of 4 steps with 2 mini-batches, of 2 with one), then a fresh trainer resumes from checkpoint-3. Writes, per rank, the final policy
checksums of both runs, the prompts of its half-used rollout and the per-step metrics to OUT.rank<r>.
"""

import json
import sys

import torch

from icegrt_trl import PPOConfig, PPOTrainer
from icegrt_trl.testbed import build_tokenizer, gold_reward, make_datasets, tiny_causal_lm

out = sys.argv[1]
# 1: one micro-batch per rollout, so the rollout is finished inside the first training step's forward
# (reuse_first_training_forward), with its all-reduces between that forward and its backward
mini_batches = int(sys.argv[2]) if len(sys.argv) > 2 else 2
tok = build_tokenizer()
prompts = make_datasets(num_unlabeled=64)["unlabeled"]


def run(folder, resume=None):
    model = tiny_causal_lm("llama", tok, hidden_size=64, num_layers=2, num_heads=2)
    args = PPOConfig(output_dir=folder, use_cpu=True, bf16=False, report_to=[], per_device_train_batch_size=4,
                     gradient_accumulation_steps=1, num_mini_batches=mini_batches, num_ppo_epochs=2, max_steps=8,
                     response_length=4, stop_token="eos", save_strategy="steps", save_steps=3,
                     gradient_checkpointing=False, disable_tqdm=True, num_sample_generations=0, logging_steps=1,
                     seed=0, learning_rate=1e-3, temperature=1.0, kl_controller="adaptive", kl_target=0.1,
                     kl_horizon=100, reward_scaling="running_meanstd")
    trainer = PPOTrainer(args=args, processing_class=tok, model=model, reward_model=gold_reward,
                         train_dataset=prompts)
    trainer.train(resume_from_checkpoint=resume)
    policy = trainer.accelerator.unwrap_model(trainer.model).policy
    checksum = float(sum(p.detach().double().abs().sum() for p in policy.parameters()))
    return trainer, checksum


full, full_sum = run(out + ".full")
rank = full.accelerator.process_index
saved = torch.load(f"{out}.full/checkpoint-3/icegrt_ppo_rollout_rank{rank}.pt", weights_only=False)
resumed, resumed_sum = run(out + ".resumed", resume=f"{out}.full/checkpoint-3")
start = tiny_causal_lm("llama", tok, hidden_size=64, num_layers=2, num_heads=2)
start_sum = float(sum(p.detach().double().abs().sum() for p in start.parameters()))


def steps(trainer):
    return {h["step"]: {k: v for k, v in h.items() if "/" in k} for h in trainer.state.log_history if "loss/policy_avg" in h}


state = {"rank": rank, "world": full.accelerator.num_processes, "full": full_sum, "resumed": resumed_sum,
         "start": start_sum, "buffer_first_query": saved["query_responses"][0].tolist(),
         "full_steps": steps(full), "resumed_steps": steps(resumed),
         "rollouts_done": [full._rollouts_done, resumed._rollouts_done]}
with open(f"{out}.rank{rank}", "w") as f:
    json.dump(state, f, default=str)
