"""share_prompt_prefix on and off, and trl 1.12, alternating fresh worker processes (issue 12's SmolLM2 settings:
four full models, batch 8, 24 new tokens every row, 2 PPO epochs, 2 threads, 3 updates of which 2 are timed).

    python benchmarks/prompt_prefix_ab.py --rounds 2 [--bf16] --trl112-path /tmp/trl112 --jsonl OUT.jsonl

One JSON line per run (round, variant, the worker's result); a line per run on stdout."""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _smollm2_speed as sm  # noqa: E402
from ppo_vs_trl112 import run_worker  # noqa: E402

VARIANTS = {
    "ours share": ("ours", ["share_prompt_prefix=true"]),
    "ours noshare": ("ours", ["share_prompt_prefix=false"]),
    "trl112": ("trl112", []),
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=2,
                   help="alternations of the three variants (order reversed every other round)")
    p.add_argument("--bf16", action="store_true", help="bf16=True on every side (trl 1.12 ignores it)")
    p.add_argument("--trl112-path", default="/tmp/trl112", help="folder of `pip install --no-deps --target` trl 1.12.0")
    p.add_argument("--jsonl", required=True, help="append one line per run here")
    args = p.parse_args()
    names = list(VARIANTS)
    with open(args.jsonl, "a") as out:
        for r in range(args.rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                impl, settings = VARIANTS[name]
                row = dict(sm.BASE, full_length=True, bf16=args.bf16)
                if settings:
                    row["set"] = settings
                res = run_worker(impl, "full", "smollm2", 3, 2, args.trl112_path, sm.worker_args(row))
                phases = {k: round(v["s"], 2) for k, v in res["phases"].items()}
                print(r, name, round(res["s_per_update"], 2), [round(x, 2) for x in res["update_s"]], phases,
                      flush=True)
                out.write(json.dumps({"round": r, "name": name, "res": res}) + "\n")
                out.flush()


if __name__ == "__main__":
    main()
