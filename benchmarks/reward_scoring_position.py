"""Where a chat reward model is read matters: the SmolLM2 recipe's reward models on the two renderings of an answer.

A reward model trained by the RewardTrainer on chat pairs is read at the last token of the chat template's rendering
(ChatML: `... answer<|im_end|>\\n`). Before commit 3d680c5, PPO scored it on the policy's own token ids, which end at
`<|im_end|>` (or, cut at the length limit, at the last answer token). For each run folder of
`benchmarks/smollm2_seeds.py`, this scores the held-out completions of its eval stage (the start policy's and the
trained policies', greedy, 24 tokens at most) both ways with that run's reward model and compares each with the gold
reward: Spearman correlation over all completions, and pairwise accuracy over the pairs of completions of one prompt
whose gold scores differ (`pairwise_accuracy_on_samples`, as the RLP stage measures it: a reward tie counts ½). A
completion of fewer than 24 tokens is taken to have ended with `<|im_end|>`.

    python benchmarks/reward_scoring_position.py /tmp/smruns_v2/seed0 /tmp/smruns_v2/seed1 /tmp/smruns_v2/seed2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from scipy.stats import spearmanr
from transformers import AutoTokenizer

from icegrt_trl.reward.evaluation import load_reward_model
from icegrt_trl.rlp.sampling import pairwise_accuracy_on_samples
from icegrt_trl.testbed.smollm2 import smollm2_path


def ids_of(encoded):
    return encoded["input_ids"] if hasattr(encoded, "keys") else encoded


@torch.no_grad()
def scores(model, sequences: list[list[int]], pad: int, batch_size: int = 32) -> list[float]:
    out = []
    for i in range(0, len(sequences), batch_size):
        chunk = sequences[i:i + batch_size]
        width = max(map(len, chunk))
        ids = torch.tensor([[pad] * (width - len(s)) + s for s in chunk])
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in chunk])
        logits = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits
        out += logits[:, 0].float().tolist()
    return out


def per_prompt(rows: list[dict], values: list[float]) -> list[list[float]]:
    """`values` (one per row) grouped by the rows' prompt, in first-seen order."""
    groups: dict[str, list[float]] = {}
    for row, value in zip(rows, values):
        groups.setdefault(json.dumps(row["prompt"]), []).append(value)
    return list(groups.values())


def check_run(run: Path, tok, max_new_tokens: int) -> dict:
    model = load_reward_model(str(run / "reward"))[0].eval()
    rows = [json.loads(line) for line in (run / "eval" / "samples.jsonl").read_text().splitlines()]
    policy_ids, rendered = [], []
    for r in rows:
        prompt = ids_of(tok.apply_chat_template(r["prompt"], tokenize=True, add_generation_prompt=True))
        answer = tok(r["completion"], add_special_tokens=False)["input_ids"]
        policy_ids.append(prompt + answer + ([tok.eos_token_id] if len(answer) < max_new_tokens else []))
        rendered.append(ids_of(tok.apply_chat_template(
            r["prompt"] + [{"role": "assistant", "content": r["completion"].strip()}], tokenize=True)))
    gold = [r["gold"] for r in rows]
    res = {"run": str(run), "completions": len(rows)}
    for name, seqs in (("policy_token_ids", policy_ids), ("chat_template", rendered)):
        s = scores(model, seqs, tok.pad_token_id)
        acc, pairs = pairwise_accuracy_on_samples(per_prompt(rows, gold), per_prompt(rows, s))
        res[name] = {"spearman_with_gold": round(float(spearmanr(gold, s)[0]), 3), "pairwise_accuracy": round(acc, 3),
                     "pairs": pairs}
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run folders of benchmarks/smollm2_seeds.py (with reward/ and eval/)")
    p.add_argument("--max-new-tokens", type=int, default=24, help="the eval stage's judge_max_new_tokens")
    p.add_argument("--json", help="file to write the figures to")
    args = p.parse_args()
    tok = AutoTokenizer.from_pretrained(smollm2_path())
    results = [check_run(Path(r), tok, args.max_new_tokens) for r in args.runs]
    for r in results:
        print(f"{r['run']}: " + "; ".join(f"{k}: Spearman {r[k]['spearman_with_gold']:+.2f}, pairwise "
                                          f"{r[k]['pairwise_accuracy']:.2f} of {r[k]['pairs']}"
                                          for k in ("policy_token_ids", "chat_template")))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
