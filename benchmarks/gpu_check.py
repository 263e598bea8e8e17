"""Two PPO updates, a checkpoint in the middle of a rollout, and a resume, under whatever `accelerate launch` set up
(DDP, FSDP2, DeepSpeed ZeRO-2/3). Run by benchmarks/gpu_check.sh on a GPU machine; also runs on the CPU.

Checks, on every rank: the step-0 KL is exactly 0 (policy = reference), the saved policy and value head hold real
(non-empty) weights, and the resumed run restores the KL coefficient, reward moments and its own rollout, then ends
with the same weights as the uninterrupted run. Prints one JSON line per rank and exits non-zero on a failed check.
"""

import json
import sys

import torch
from safetensors.torch import load_file

from icegrt_trl import PPOConfig, PPOTrainer
from icegrt_trl.testbed import build_tokenizer, gold_reward, make_datasets, tiny_causal_lm

out = sys.argv[1]
lora = "--lora" in sys.argv
tok = build_tokenizer()
prompts = make_datasets(num_unlabeled=256)["unlabeled"]


def run(folder, resume=None):
    model = tiny_causal_lm("llama", tok, hidden_size=256, num_layers=4, num_heads=4)
    peft = None
    if lora:
        from peft import LoraConfig

        peft = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    args = PPOConfig(output_dir=folder, report_to=[], use_cpu=not torch.cuda.is_available(), per_device_train_batch_size=8, gradient_accumulation_steps=1,
                     num_mini_batches=2, num_ppo_epochs=1, max_steps=4, response_length=8, stop_token="eos",
                     save_strategy="steps", save_steps=3, disable_tqdm=True, num_sample_generations=0,
                     logging_steps=1, seed=0, learning_rate=1e-4, kl_controller="adaptive", kl_target=0.1,
                     kl_horizon=100, reward_scaling="running_meanstd")
    trainer = PPOTrainer(args=args, processing_class=tok, model=model, reward_model=gold_reward,
                         train_dataset=prompts, peft_config=peft)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


full = run(out + "/full")
resumed = run(out + "/resumed", resume=out + "/full/checkpoint-3")
rank = full.accelerator.process_index
ckpt = out + "/full/checkpoint-3"
weights = load_file(f"{ckpt}/adapter_model.safetensors" if lora else f"{ckpt}/model.safetensors")
head = load_file(f"{ckpt}/value_head.safetensors")
w_full = full.accelerator.get_state_dict(full.model_wrapped)
w_res = resumed.accelerator.get_state_dict(resumed.model_wrapped)
same = all(torch.allclose(w_full[k].float(), w_res[k].float(), rtol=1e-3, atol=1e-5) for k in w_full) \
    if w_full is not None and w_res is not None else None
checks = {
    "step0_kl_zero": full.state.log_history[0]["objective/kl"] == 0.0,
    "saved_weights_nonempty": all(v.numel() > 0 for v in weights.values()) and all(v.numel() > 0 for v in head.values()),
    "kl_coef_restored": resumed.kl_ctl.value == full.kl_ctl.value,
    "reward_moments_restored": resumed.reward_scaler.state_dict() == full.reward_scaler.state_dict(),
    "resumed_weights_equal": same,
}
print("GPU_CHECK " + json.dumps({"rank": rank, "world": full.accelerator.num_processes, "lora": lora, **checks}))
sys.exit(0 if all(v is not False for v in checks.values()) else 1)
