"""Run by tests/test_ppo_distributed.py with `python -m torch.distributed.run --nproc_per_node 2` (gloo on the CPU;
`accelerate launch` starts the same processes). PPO with the ptx loss, whose forward runs outside DDP's forward.

Writes the trainer's final log entry, both processes' policy checksums (and the one before training), the ptx
rows each process consumed and the policy's attention implementation to OUT (rank 0) and OUT.rank1. A second
argument "bf16" trains with bf16=True (on a CPU: our padding-free eager attention).
"""

import json
import sys


from icegrt_trl import PPOConfig, PPOTrainer
from icegrt_trl.testbed import build_tokenizer, gold_reward, make_datasets, tiny_causal_lm

out = sys.argv[1]
bf16 = sys.argv[2:] == ["bf16"]
tok = build_tokenizer()
model = tiny_causal_lm("llama", tok, hidden_size=64, num_layers=2, num_heads=2)
args = PPOConfig(output_dir=out + ".run", use_cpu=True, bf16=bf16, report_to=[], per_device_train_batch_size=8,
                 gradient_accumulation_steps=2, num_mini_batches=2, num_ppo_epochs=1, max_steps=4,
                 response_length=4, stop_token="eos", save_strategy="no", gradient_checkpointing=False,
                 disable_tqdm=True, num_sample_generations=0, logging_steps=2, seed=0, learning_rate=1e-3,
                 kl_controller="adaptive", reward_scaling="running_meanstd", ptx_coef=0.1)
data = make_datasets(num_unlabeled=64, num_sft=64)
start = float(sum(p.detach().double().sum() for p in model.parameters()))
trainer = PPOTrainer(args=args, processing_class=tok, model=model, reward_model=gold_reward,
                     train_dataset=data["unlabeled"], ptx_dataset=data["sft"])
ptx_rows = []
next_batch = trainer.ptx.next_batch
trainer.ptx.next_batch = lambda *a: (lambda b: (ptx_rows.extend(b["input_ids"].tolist()), b)[1])(next_batch(*a))
trainer.train()
policy = trainer.accelerator.unwrap_model(trainer.model).policy
checksum = float(sum(p.detach().double().sum() for p in policy.parameters()))
rank = trainer.accelerator.process_index
state = {"rank": rank, "world": trainer.accelerator.num_processes, "checksum": checksum, "start": start,
         "ptx_rows": ptx_rows, "attention": policy.config._attn_implementation,
         "kl_coef": trainer.kl_ctl.value, "reward_moments": trainer.reward_scaler.state_dict(),
         "log": [h for h in trainer.state.log_history if "objective/kl" in h]}
with open(out + (f".rank{rank}" if rank else ""), "w") as f:
    json.dump(state, f, default=str)
