"""GRM in miniature: baseline BT vs GRM sft / dpo_noref / dpo on a small, noisy preference set; ID and OOD accuracy.

    python benchmarks/reward_grm.py --seeds 0 1 2 --num-preferences 200 --out benchmarks/results/reward_grm_200.json
    python benchmarks/reward_grm.py --diagnostics --out benchmarks/results/lm_diagnostics.json

Every reward model starts from the same SFT'd tiny Llama (GRM initialises the RM from the SFT model) with the same
reward head; the only difference between arms is the regularizer (the baseline is α = 0). Accuracy is measured on
the testbed's clean `preferences_id` (3–6 digit inputs) and `preferences_ood` (7–9 digits) splits, 300 pairs each.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from pathlib import Path

import torch

from icegrt_trl import GRMRewardModel, RewardConfig, RewardTrainer
from icegrt_trl.reward.evaluation import evaluate_reward_model
from icegrt_trl.testbed import build_tokenizer, make_datasets, mean_gold_score
from icegrt_trl.testbed.sft import train_sft_policy

ARMS = {"baseline": None, "grm-sft": "sft", "grm-dpo_noref": "dpo_noref", "grm-dpo": "dpo"}


def sft_policy(out: Path, tokenizer, seed: int = 0):
    """The SFT'd tiny Llama (~10 s on 2 cores), cached on disk."""
    from transformers import AutoModelForCausalLM

    sft_data = make_datasets()["sft"]
    digest = hashlib.sha1(json.dumps(sft_data.to_list()).encode()).hexdigest()[:10]  # stale caches never reused
    path = out / f"sft-seed{seed}-{digest}"
    train_sft_policy(path, seed=seed, sft_data=sft_data)
    return AutoModelForCausalLM.from_pretrained(path)


def train_rm(base_dir: Path, tokenizer, train, regularizer, seed, alpha=0.01, beta=0.1, epochs=8, lr=1e-3,
             head="mlp", out=None):
    lm = sft_policy(base_dir, tokenizer)
    torch.manual_seed(seed)  # the reward head's initialisation
    model = GRMRewardModel.from_causal_lm(lm, head_type=head)
    args = RewardConfig(output_dir=str(out or base_dir / "rm-run"), per_device_train_batch_size=16,
                        num_train_epochs=epochs, learning_rate=lr, lr_scheduler_type="cosine", warmup_steps=0.1,
                        logging_steps=10, report_to=[], save_strategy="no", use_cpu=True, bf16=False, seed=seed,
                        max_length=64, gradient_checkpointing=False, disable_tqdm=True,
                        grm_regularizer=regularizer, grm_alpha=alpha if regularizer else 0.01, grm_beta=beta)
    trainer = RewardTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
    trainer.train()
    return trainer.model


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--num-preferences", type=int, default=200)
    p.add_argument("--alpha", type=float, default=0.01)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--arms", nargs="+", default=list(ARMS))
    p.add_argument("--work", default="benchmarks/_work")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--diagnostics", action="store_true", help="only measure the SFT LM itself (see lm_diagnostics)")
    p.add_argument("--out", default="benchmarks/results/reward_grm.json")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    work = Path(a.work)
    tok = build_tokenizer()
    data = make_datasets(num_preferences=a.num_preferences)
    evals = {"id": data["preferences_id"], "ood": data["preferences_ood"]}
    if a.diagnostics:
        diag = lm_diagnostics(work, tok, data)
        print(json.dumps(diag))
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(diag, indent=2))
        return
    print(f"SFT policy gold score: {mean_gold_score(sft_policy(work, tok), tok, data['eval']['prompt'][:100]):.3f}")
    rows = []
    for seed in a.seeds:
        for arm in a.arms:
            t0 = time.time()
            model = train_rm(work, tok, data["preferences"], ARMS[arm], seed, a.alpha, a.beta, a.epochs, a.lr)
            res = evaluate_reward_model(model, tok, evals, n_resamples=200)
            rows.append({"arm": arm, "seed": seed, "id": res["id"]["accuracy"], "ood": res["ood"]["accuracy"],
                         "seconds": round(time.time() - t0, 1)})
            print(json.dumps(rows[-1]), flush=True)
    summary = {}
    for arm in a.arms:
        sel = [r for r in rows if r["arm"] == arm]
        summary[arm] = {k: {"mean": statistics.mean(r[k] for r in sel),
                            "std": statistics.stdev(r[k] for r in sel) if len(sel) > 1 else 0.0} for k in ("id", "ood")}
        print(f"{arm:14s} ID {summary[arm]['id']['mean']:.3f} ± {summary[arm]['id']['std']:.3f}   "
              f"OOD {summary[arm]['ood']['mean']:.3f} ± {summary[arm]['ood']['std']:.3f}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"config": vars(a), "runs": rows, "summary": summary}, indent=2))



def lm_diagnostics(work: Path, tokenizer, data) -> dict:
    """Why GRM may (not) help here: how good is the SFT LM itself, in and out of distribution?

    * gold score of its greedy answers on ID / OOD prompts (does the LM 'know' the OOD task?);
    * accuracy of its summed log-likelihood as a zero-shot reward, log π(y_c|x) > log π(y_r|x), on the clean splits
      (the signal that GRM's regularizers keep in the shared hidden states).
    """
    from icegrt_trl.reward.losses import sequence_logps

    lm = sft_policy(work, tokenizer).eval()
    out = {}
    for name in ("id", "ood"):
        ds = data[f"preferences_{name}"]
        prompts = list(dict.fromkeys(ds["prompt"]))[:100]
        out[f"sft_gold_{name}"] = mean_gold_score(lm, tokenizer, prompts, max_new_tokens=12)
        wins = []
        for row in ds:
            lps = []
            for side in ("chosen", "rejected"):
                ids = tokenizer(row["prompt"] + row[side] + tokenizer.eos_token, return_tensors="pt")["input_ids"]
                n_prompt = len(tokenizer(row["prompt"])["input_ids"])
                mask = torch.zeros_like(ids)
                mask[:, n_prompt:] = 1
                with torch.no_grad():
                    lps.append(sequence_logps(lm(ids).logits, ids, mask).item())
            wins.append(1.0 if lps[0] > lps[1] else 0.5 if lps[0] == lps[1] else 0.0)
        out[f"lm_logp_accuracy_{name}"] = sum(wins) / len(wins)
    return out


if __name__ == "__main__":
    main()
