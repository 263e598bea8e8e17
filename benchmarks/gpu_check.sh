#!/usr/bin/env bash
# Two PPO updates + a mid-rollout checkpoint + resume under each shipped accelerate config, on a GPU machine.
#   bash benchmarks/gpu_check.sh [NUM_GPUS]     (DeepSpeed rows need `pip install deepspeed`)
# Results go to benchmarks/results/gpu_check.txt; docs/ppo.md ("Several processes") records what ran where.
set -uo pipefail
cd "$(dirname "$0")/.."
N=${1:-$(python -c "import torch; print(max(torch.cuda.device_count(), 1))")}
OUT=$(mktemp -d)
RESULTS=benchmarks/results/gpu_check.txt
: > "$RESULTS"
for cfg in ddp fsdp2 zero2 zero3; do
  for mode in full lora; do
    flag=""; [ "$mode" = lora ] && flag="--lora"
    echo "== $cfg / $mode / $N processes" | tee -a "$RESULTS"
    accelerate launch --config_file "recipes/accelerate/$cfg.yaml" --num_processes "$N" \
      benchmarks/gpu_check.py "$OUT/$cfg-$mode" $flag 2>&1 | grep -E "GPU_CHECK|Error|error" | tail -5 | tee -a "$RESULTS"
    echo "exit ${PIPESTATUS[0]}" | tee -a "$RESULTS"
  done
done
