"""Run by tests/test_vllm_faults.py with `python -m torch.distributed.run --nproc_per_node 2` (gloo on the CPU):
PPO with `use_vllm=True` against the server at URL, a LoRA policy, three rollouts. With a third argument
`smollm2` (tests/test_vllm_rollouts.py, against the real server): SmolLM2-135M-Instruct + LoRA on chat prompts,
bf16 base, two rollouts.

Writes each process's policy checksums (before and after training) and the prompts it sampled to OUT.rank0 and
OUT.rank1.
"""

import json
import sys

from peft import LoraConfig

from icegrt_trl import PPOConfig, PPOTrainer
from icegrt_trl.testbed import build_tokenizer, gold_reward, make_datasets, tiny_causal_lm

url, out = sys.argv[1], sys.argv[2]
real_model = len(sys.argv) > 3 and sys.argv[3] == "smollm2"
settings = dict(output_dir=out + ".run", use_cpu=True, report_to=[], num_mini_batches=1, num_ppo_epochs=1,
                stop_token="eos", save_strategy="no", gradient_checkpointing=False, disable_tqdm=True,
                num_sample_generations=0, logging_steps=1, seed=0, use_vllm=True, vllm_server_base_url=url,
                vllm_server_timeout=10.0)
if real_model:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from icegrt_trl.testbed.smollm2 import smollm2_path

    tok = AutoTokenizer.from_pretrained(smollm2_path())
    model = AutoModelForCausalLM.from_pretrained(smollm2_path(), dtype=torch.bfloat16)
    questions = ["What is 2 plus 3?", "Name a color.", "Count to three.", "Say hello.", "What is 6 times 2?",
                 "What is 9 minus 1?", "What is 7 minus 4?", "What is 10 plus 5?"]
    data = Dataset.from_dict({"prompt": [[{"role": "user", "content": q}] for q in questions]})
    args = PPOConfig(**settings, bf16=True, per_device_train_batch_size=2, max_steps=2, response_length=8,
                     learning_rate=1e-3, vllm_request_timeout=300.0)
    reward = lambda prompts, completions, **kw: [-len(c[0]["content"]) / 20.0 for c in completions]  # noqa: E731
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
else:
    tok = build_tokenizer()
    model = tiny_causal_lm("llama", tok, hidden_size=32, num_layers=2, num_heads=2)
    data = make_datasets(num_unlabeled=64)["unlabeled"]
    args = PPOConfig(**settings, bf16=False, per_device_train_batch_size=4, max_steps=3, response_length=4,
                     learning_rate=1e-2, vllm_request_timeout=30.0)
    reward = gold_reward
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
trainer = PPOTrainer(args=args, processing_class=tok, model=model, reward_model=reward, train_dataset=data,
                     peft_config=lora)


def adapter_checksum():
    policy = trainer.accelerator.unwrap_model(trainer.model).policy
    return float(sum(p.detach().double().sum() for n, p in policy.named_parameters() if "lora_" in n))


start = adapter_checksum()
sampled = []
sample = trainer.vllm_engine.sample
trainer.vllm_engine.sample = lambda queries, mask, *a, **kw: (
    sampled.append([q[m.bool()].tolist() for q, m in zip(queries, mask)]), sample(queries, mask, *a, **kw))[1]
trainer.train()
rank = trainer.accelerator.process_index
with open(f"{out}.rank{rank}", "w") as f:
    json.dump({"world": trainer.accelerator.num_processes, "start": start, "end": adapter_checksum(),
               "sampled": sampled, "steps": trainer.state.global_step}, f)
