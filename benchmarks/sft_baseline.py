"""SFT baseline on the testbed: gold score of the untrained and the SFT policy, per architecture and seed.

    python benchmarks/sft_baseline.py --seeds 0 1 2 --archs llama qwen2

Prints a markdown table (the one in docs/testbed.md). Runs the `sft` stage of recipes/tiny-offline.yaml.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from icegrt_trl.cli import main as cli

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "tiny-offline.yaml"


def run(arch: str, seed: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        code = cli(["pipeline", str(RECIPE), "--output_dir", out, "--stages", "sft,eval",
                    "--sft.model_name_or_path", f"testbed:{arch}", "--sft.seed", str(seed)])
        assert code == 0
        results = json.loads((Path(out) / "results.json").read_text())
    return {"before": results["sft"]["gold_score_before"], "after": results["sft"]["gold_score_after"],
            "exact": results["eval"]["stage:sft/exact_match"], "seconds": results["sft"]["runtime_s"]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--archs", nargs="+", default=["llama", "qwen2"])
    args = p.parse_args()
    rows = []
    for arch in args.archs:
        runs = [run(arch, s) for s in args.seeds]
        stat = lambda k: (statistics.mean(r[k] for r in runs), statistics.pstdev(r[k] for r in runs))  # noqa: E731
        rows.append((arch, stat("before"), stat("after"), stat("exact"), stat("seconds")))
    print("| policy | gold before SFT | gold after SFT | exact match after | SFT stage seconds |")
    print("| --- | --- | --- | --- | --- |")
    for arch, b, a, e, s in rows:
        print(f"| {arch} | {b[0]:.3f} ± {b[1]:.3f} | {a[0]:.3f} ± {a[1]:.3f} | {e[0]:.3f} ± {e[1]:.3f} | "
              f"{s[0]:.0f} ± {s[1]:.0f} |")
    print(f"\n{len(args.seeds)} seeds ({args.seeds}), mean ± std.")


if __name__ == "__main__":
    main()
