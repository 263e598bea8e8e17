"""Datasets of the testbed in TRL's standard formats.

=====================  ===========================================  ==========================================
split                  columns                                      used by
=====================  ===========================================  ==========================================
``sft``                ``prompt``, ``completion``                   SFT (demonstrations with deliberate errors)
``preferences``        ``prompt``, ``chosen``, ``rejected``         reward model training (noisy labels)
``preferences_pmp``    ``prompt``, ``chosen``, ``rejected``         Qwen-style PMP: larger and noisier
``preferences_id``     ``prompt``, ``chosen``, ``rejected``         RM eval, same distribution, clean labels
``preferences_ood``    ``prompt``, ``chosen``, ``rejected``         RM eval, longer inputs, clean labels
``unlabeled``          ``prompt``                                   RLP (policy samples), PPO prompts
``eval``               ``prompt``                                   gold judge of policies
=====================  ===========================================  ==========================================

Evaluation prompts are held out: no other split contains them.

The ``chat`` suite (``TestbedConfig(suite="chat")``, tasks in `chat_tasks`) is for real instruction models: chat
prompts with a programmatic gold reward, and only the ``sft``, ``unlabeled`` and ``eval`` splits — its preference
pairs come from the model's own samples (the ``sample_preferences`` stage).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from datasets import Dataset, DatasetDict

from .chat_tasks import CHAT_TASKS, sample_chat_problem
from .tasks import TASKS, Problem, corrupt, format_answer, parse_answer, sample_problem, score_answer


SUITES = {"digits": TASKS, "chat": CHAT_TASKS}


@dataclass
class TestbedConfig:
    """Sizes and noise levels of the testbed datasets.

    Args:
        seed: seed of every random choice; the same seed gives the same datasets.
        suite: ``"digits"`` — the digit tasks for tiny models (every split below); ``"chat"`` — chat tasks for a
            real instruction model (arithmetic, counting, sorting, capitals; `sft`, `unlabeled` and `eval` only).
        tasks: task families to draw problems from (digits: ``"sort"``, ``"reverse"``; chat: ``"add"``,
            ``"count"``, ``"sort"``, ``"upper"``). Default: all of the suite's.
        min_len, max_len: input lengths (digits) of in-distribution problems.
        ood_min_len, ood_max_len: input lengths of the out-of-distribution preference split.
        num_sft: demonstrations. demo_error_rate: share of demonstrations with one random mistake.
        demo_verbose_tasks, demo_verbose_rate: demonstrators of these tasks write "the answer is ..." at this
            rate, a habit the gold judge penalizes. SFT imitates it (greedy decoding keeps it, since it is the
            majority habit), so RL has a clear way to improve on SFT.
        pref_verbose_rate: share of preference-pair candidates written with that habit, so reward models see it.
        num_preferences, label_noise: reward-model pairs and the share of them whose labels are flipped.
        num_pmp, pmp_label_noise: the larger, noisier comparison set for preference-model pretraining.
        num_pref_eval: pairs in each clean evaluation split (ID and OOD).
        num_unlabeled: prompts without answers (RLP samples, PPO prompts). num_eval: held-out judge prompts.
        conversational: emit chat messages instead of plain text prompts/completions.
    """

    __test__ = False  # not a pytest class despite its name

    seed: int = 0
    suite: str = "digits"
    tasks: tuple[str, ...] | None = None
    min_len: int = 3
    max_len: int = 6
    ood_min_len: int = 7
    ood_max_len: int = 9
    num_sft: int = 2000
    demo_error_rate: float = 0.3
    demo_verbose_tasks: tuple[str, ...] = ("reverse",)
    demo_verbose_rate: float = 0.7
    pref_verbose_rate: float = 0.15
    num_preferences: int = 1000
    label_noise: float = 0.2
    num_pmp: int = 4000
    pmp_label_noise: float = 0.35
    num_pref_eval: int = 300
    num_unlabeled: int = 500
    num_eval: int = 200
    conversational: bool = False

    def __post_init__(self):
        if self.suite not in SUITES:
            raise ValueError(f"TestbedConfig.suite={self.suite!r}; choose one of {tuple(SUITES)}.")
        known = SUITES[self.suite]
        self.tasks = tuple(self.tasks) if self.tasks else known
        if set(self.tasks) - set(known):
            raise ValueError(f"Unknown {self.suite} testbed tasks {sorted(set(self.tasks) - set(known))}; "
                             f"choose from {known}.")
        for name in ("demo_error_rate", "label_noise", "pmp_label_noise"):
            if not 0.0 <= getattr(self, name) <= 0.5:
                raise ValueError(f"TestbedConfig.{name}={getattr(self, name)} must lie in [0, 0.5].")
        for name in ("demo_verbose_rate", "pref_verbose_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"TestbedConfig.{name}={getattr(self, name)} must lie in [0, 1].")
        if not 1 <= self.min_len <= self.max_len:
            raise ValueError("TestbedConfig needs 1 <= min_len <= max_len.")
        unknown = set(self.demo_verbose_tasks) - set(TASKS)
        if unknown:
            raise ValueError(f"Unknown testbed tasks {sorted(unknown)}; choose from {TASKS}.")


def candidate_answer(problem: Problem, rng: random.Random) -> tuple[int, ...]:
    """A candidate response as a weak policy would write it: right, slightly or badly wrong."""
    target = problem.target
    r = rng.random()
    if r < 0.25:
        return target
    if r < 0.6:
        return corrupt(target, rng)
    if r < 0.8:
        return corrupt(corrupt(target, rng), rng)
    if r < 0.9:
        return problem.digits  # echo of the input
    shuffled = list(problem.digits)
    rng.shuffle(shuffled)
    return tuple(shuffled)


class _Formatter:
    def __init__(self, conversational: bool):
        self.conversational = conversational

    def prompt(self, p: Problem):
        return [{"role": "user", "content": p.instruction}] if self.conversational else p.prompt

    def completion(self, digits, verbose: bool = False):
        text = format_answer(digits, verbose)
        return [{"role": "assistant", "content": text.strip()}] if self.conversational else text


def _problems(rng, n, lo, hi, tasks, exclude):
    out = []
    while len(out) < n:
        p = sample_problem(rng, lo, hi, tasks)
        if p.prompt not in exclude:
            out.append(p)
    return out


def _preference_rows(problems, rng, noise, fmt, verbose_rate):
    rows = []
    for p in problems:
        while True:  # two candidates with different gold scores
            a, b = candidate_answer(p, rng), candidate_answer(p, rng)
            va, vb = rng.random() < verbose_rate, rng.random() < verbose_rate
            sa = score_answer(parse_answer(format_answer(a, va)), p.target)
            sb = score_answer(parse_answer(format_answer(b, vb)), p.target)
            if sa != sb:
                break
        chosen, rejected = ((a, va), (b, vb)) if sa > sb else ((b, vb), (a, va))
        if rng.random() < noise:
            chosen, rejected = rejected, chosen
        rows.append({"prompt": fmt.prompt(p), "chosen": fmt.completion(*chosen), "rejected": fmt.completion(*rejected)})
    return rows


def make_datasets(config: TestbedConfig | None = None, **overrides) -> DatasetDict:
    """Build every split of the testbed (see module docstring)."""
    config = config or TestbedConfig(**overrides)
    if config.suite == "chat":
        return _chat_datasets(config)
    rng = random.Random(config.seed)
    fmt = _Formatter(config.conversational)
    eval_problems = _problems(rng, config.num_eval, config.min_len, config.max_len, config.tasks, set())
    held_out = {p.prompt for p in eval_problems}
    draw = lambda n, lo=config.min_len, hi=config.max_len: _problems(rng, n, lo, hi, config.tasks, held_out)  # noqa: E731

    pv = config.pref_verbose_rate
    sft_rows = []
    for p in draw(config.num_sft):
        answer = p.target
        if rng.random() < config.demo_error_rate:
            answer = corrupt(answer, rng)
        verbose = p.task in config.demo_verbose_tasks and rng.random() < config.demo_verbose_rate
        sft_rows.append({"prompt": fmt.prompt(p), "completion": fmt.completion(answer, verbose)})

    splits = {
        "sft": sft_rows,
        "preferences": _preference_rows(draw(config.num_preferences), rng, config.label_noise, fmt, pv),
        "preferences_pmp": _preference_rows(draw(config.num_pmp), rng, config.pmp_label_noise, fmt, pv),
        "preferences_id": _preference_rows(draw(config.num_pref_eval), rng, 0.0, fmt, pv),
        "preferences_ood": _preference_rows(
            draw(config.num_pref_eval, config.ood_min_len, config.ood_max_len), rng, 0.0, fmt, pv
        ),
        "unlabeled": [{"prompt": fmt.prompt(p)} for p in draw(config.num_unlabeled)],
        "eval": [{"prompt": fmt.prompt(p)} for p in eval_problems],
    }
    return DatasetDict({name: Dataset.from_list(rows) for name, rows in splits.items()})


def _chat_datasets(config: TestbedConfig) -> DatasetDict:
    """The chat suite: conversational prompts; demonstrations give the bare answer (`demo_error_rate` of them a
    wrong one: another problem's answer of the same task)."""
    rng = random.Random(config.seed)
    seen: set[str] = set()

    def draw(n):
        out = []
        while len(out) < n:
            p = sample_chat_problem(rng, config.tasks)
            if p.instruction not in seen:
                seen.add(p.instruction)
                out.append(p)
        return out

    user = lambda p: [{"role": "user", "content": p.instruction}]  # noqa: E731
    eval_problems = draw(config.num_eval)
    sft_rows = []
    for p in draw(config.num_sft):
        answer = p.answer
        if rng.random() < config.demo_error_rate:
            answer = sample_chat_problem(rng, (p.task,)).answer
        sft_rows.append({"prompt": user(p), "completion": [{"role": "assistant", "content": answer}]})
    splits = {"sft": sft_rows, "unlabeled": [{"prompt": user(p)} for p in draw(config.num_unlabeled)],
              "eval": [{"prompt": user(p)} for p in eval_problems]}
    return DatasetDict({name: Dataset.from_list(rows) for name, rows in splits.items()})


def label_agreement(dataset: Dataset) -> float:
    """Share of pairs whose `chosen` has the higher gold score (1 − the realised label-noise rate)."""
    from .tasks import gold_reward

    chosen = gold_reward(dataset["prompt"], dataset["chosen"])
    rejected = gold_reward(dataset["prompt"], dataset["rejected"])
    return sum(c > r for c, r in zip(chosen, rejected)) / len(dataset)


__all__ = ["TestbedConfig", "make_datasets", "label_agreement", "candidate_answer", "parse_answer"]
