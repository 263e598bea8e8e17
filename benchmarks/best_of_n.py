"""Over-optimization in miniature: best-of-n with n = 1 … 64, proxy vs gold score, baseline RM vs GRM RM.

    python benchmarks/best_of_n.py --num-preferences 200 --prompts 100 --plot docs/reward_best_of_n.png

The SFT policy samples 64 completions per held-out prompt (temperature 1). Each reward model picks the best of n;
the expected gold (and proxy) score of that pick is computed exactly over all n-subsets of the 64 samples
(`best_of_n_expectation`), which removes the sampling noise of drawing subsets. Proxy scores are standardised per
reward model (z-scores over all samples) so that the two models share an axis. The plot uses matplotlib (a
dependency).
"""

from __future__ import annotations

import argparse
import json
from math import comb
from pathlib import Path

import numpy as np
import torch

from icegrt_trl.reward.evaluation import score_completions
from icegrt_trl.testbed import build_tokenizer, generate_completions, gold_reward, make_datasets

from reward_grm import sft_policy, train_rm  # same folder

NS = (1, 2, 4, 8, 16, 32, 64)


def best_of_n_expectation(proxy, value, n: int) -> float:
    """E[value of the proxy-argmax of a uniformly random n-subset of the N samples] (exact, no resampling).

    Sorted by proxy ascending, sample i (1-based) is the pick iff it is in the subset and the other n−1 members
    come from the i−1 samples below it: P = C(i−1, n−1) / C(N, n).
    """
    proxy, value = np.asarray(proxy, float), np.asarray(value, float)
    N = proxy.size
    if not 1 <= n <= N:
        raise ValueError(f"n={n} must lie in [1, {N}].")
    order = np.argsort(proxy, kind="stable")
    weights = np.array([comb(i - 1, n - 1) for i in range(1, N + 1)], float) / comb(N, n)
    return float((weights * value[order]).sum())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-preferences", type=int, default=200)
    p.add_argument("--prompts", type=int, default=100)
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grm", default="sft", help="GRM regularizer of the GRM arm")
    p.add_argument("--alpha", type=float, default=0.01)
    p.add_argument("--work", default="benchmarks/_work")
    p.add_argument("--out", default="benchmarks/results/best_of_n.json")
    p.add_argument("--plot", default="docs/reward_best_of_n.png")
    a = p.parse_args()
    torch.set_num_threads(1)
    work, tok = Path(a.work), build_tokenizer()
    data = make_datasets(num_preferences=a.num_preferences)
    policy = sft_policy(work, tok)
    prompts = data["eval"]["prompt"][: a.prompts]
    completions = generate_completions(policy, tok, prompts, do_sample=True, temperature=1.0,
                                       num_return_sequences=a.samples, seed=a.seed, batch_size=16)
    flat_prompts = [q for q in prompts for _ in range(a.samples)]
    gold = np.array(gold_reward(flat_prompts, completions)).reshape(len(prompts), a.samples)
    rms = {"baseline": None, f"grm-{a.grm}": a.grm}
    curves = {}
    for name, reg in rms.items():
        model = train_rm(work, tok, data["preferences"], reg, a.seed, alpha=a.alpha)
        proxy = np.array(score_completions(model, tok, flat_prompts, completions, batch_size=256))
        proxy = ((proxy - proxy.mean()) / proxy.std()).reshape(len(prompts), a.samples)
        curves[name] = {
            "gold": [float(np.mean([best_of_n_expectation(proxy[k], gold[k], n) for k in range(len(prompts))]))
                     for n in NS],
            "proxy": [float(np.mean([best_of_n_expectation(proxy[k], proxy[k], n) for k in range(len(prompts))]))
                      for n in NS],
        }
        print(name, {n: round(g, 4) for n, g in zip(NS, curves[name]["gold"])}, flush=True)
    oracle = [float(np.mean([best_of_n_expectation(gold[k], gold[k], n) for k in range(len(prompts))])) for n in NS]
    result = {"config": vars(a), "n": list(NS), "curves": curves, "oracle_gold": oracle}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    if a.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        for name, c in curves.items():
            ax1.plot(NS, c["gold"], marker="o", label=name)
            ax2.plot(NS, c["proxy"], marker="o", label=name)
        ax1.plot(NS, oracle, ls="--", c="grey", label="oracle (pick by gold)")
        for ax, title in ((ax1, "gold score of the best-of-n pick"), (ax2, "proxy score (z) of the pick")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("n")
            ax.set_title(title)
            ax.grid(alpha=0.3)
        ax1.legend()
        fig.suptitle(f"best-of-n on the testbed ({a.prompts} prompts × {a.samples} samples; RMs on "
                     f"{a.num_preferences} noisy pairs)")
        fig.tight_layout()
        Path(a.plot).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(a.plot, dpi=120)
        print("plot:", a.plot)


if __name__ == "__main__":
    main()
