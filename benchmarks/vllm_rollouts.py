"""PPO on SmolLM2-135M-Instruct + LoRA with and without vLLM rollouts, on this machine (issue 13).

Starts a vLLM server (`icegrt-trl vllm-serve testbed:smollm2`, from the environment `scripts/make_vllm_env.sh`
builds), then alternates fresh worker processes (`_ppo_bench_worker.py`): our trainer with `model.generate`, with
`merge_adapter_for_generation`, and with `use_vllm=True` against the server. Same settings as the issue-12 LoRA rows
(bf16 base, batch 8, 24 new tokens, 2 PPO epochs, 2 torch threads). Each run times the updates after the first; the
phase split puts the server's sampling (HTTP and adapter upload included) under "generation".

`--full-weights`: four full models instead (fp32 weights, bf16=True), `model.generate` against `use_vllm=True`,
whose policy is written and reloaded into the server after each update.

    python benchmarks/vllm_rollouts.py --alternations 2 --json benchmarks/results/vllm_rollouts_smollm2.json
    python benchmarks/vllm_rollouts.py --full-weights --json benchmarks/results/vllm_rollouts_smollm2_full.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import _smollm2_speed as sm  # noqa: E402
from ppo_vs_trl112 import run_worker  # noqa: E402

from icegrt_trl.vllm_serve import VLLMServerProcess  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--alternations", type=int, default=2)
    p.add_argument("--updates", type=int, default=3, help="updates per run, the first one not timed")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--full-weights", action="store_true", help="four full models instead of LoRA on one base")
    p.add_argument("--json", help="write every raw result here")
    args = p.parse_args(argv)
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    t0 = time.monotonic()
    server = VLLMServerProcess("testbed:smollm2", max_lora_rank=16, log_path="/tmp/icegrt_vllm_bench_server.log")
    url = server.url
    log(f"vLLM server up at {url} after {time.monotonic() - t0:.0f} s")
    vllm = ["use_vllm=true", f"vllm_server_base_url={url}"]
    if args.full_weights:
        mode, base = "full", dict(sm.BASE, bf16=True)
        rows = {"full, model.generate": base, "full, vLLM server": dict(base, set=vllm)}
    else:
        mode, base = "lora", dict(sm.BASE, bf16=True, base_dtype="bfloat16")
        rows = {
            "LoRA, model.generate": base,
            "LoRA, merged generation": dict(base, set=["merge_adapter_for_generation=true"]),
            "LoRA, vLLM server": dict(base, set=vllm),
        }
    raw = {name: [] for name in rows}
    try:
        for _ in range(args.alternations):
            for name, row in rows.items():
                res = run_worker("ours", mode, "smollm2", args.updates, args.threads, "", sm.worker_args(row))
                raw[name].append(res)
                log(f"  {name:28s} {res['s_per_update']:.2f} s/update (updates "
                    f"{', '.join(f'{x:.2f}' for x in res['update_s'])})")
                if args.json:
                    Path(args.json).write_text(json.dumps(raw, indent=1))
    finally:
        server.stop()
    print("| row | s/update per run | median | generation s (share) | rollout forwards s | training s | other s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, rs in raw.items():
        med = statistics.median(r["s_per_update"] for r in rs)
        g = {k: statistics.median(sm.phase_groups(r["phases"])[k] for r in rs) for k in sm.phase_groups(rs[0]["phases"])}
        runs = ", ".join(f"{r['s_per_update']:.2f}" for r in rs)
        print(f"| {name} | {runs} | {med:.2f} | "
              f"{g['generation']:.2f} ({g['generation'] / sum(g.values()):.0%}) | {g['rollout forwards']:.2f} | "
              f"{g['training (fwd+bwd+step)']:.2f} | {g['other']:.2f} |")
    print(f"\nCommand: `python benchmarks/vllm_rollouts.py {' '.join(argv if argv is not None else sys.argv[1:])}`")


if __name__ == "__main__":
    main()
