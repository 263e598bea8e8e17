"""Chat tasks for a real instruction model, with a programmatic gold reward (the testbed's ``chat`` suite).

Four task families that a 135M instruction model can partly do and can learn, each asking for a bare answer:

===========  ==================================================================================  ===========
task         prompt (the user turn)                                                              ideal answer
===========  ==================================================================================  ===========
``add``      What is 7 plus 12? Answer with the number only.                                     ``19``
``larger``   Which number is larger, 14 or 9? Answer with the number only.                       ``14``
``count``    How many words are in this list: apple, river, stone? Answer with the number only.  ``3``
``sort``     Sort these numbers from smallest to largest: 9, 2, 5. Answer with the numbers        ``2, 5, 9``
             only, separated by commas.
===========  ==================================================================================  ===========

The gold reward reads the problem back from the prompt text (so it works on rendered chat prompts too) and scores an
answer in [0, 1] from two equal parts: **correct** (0.5) — it states the right answer (`is_correct`: the number it
ends with, or for `larger` starts with; the sorted list in order); **concise** (0.5) — it is a bare answer as asked
(numbers, commas and spaces, one final period at most). So "19" scores 1.0, "7 + 12 = 19" and "20" 0.5, and "The
sum is twenty" 0.0. Following the format counts as much as the arithmetic: with more weight on correctness, a reward
model fitted on SmolLM2's own samples learns that long explanations (which are more often right) are better, and
PPO against it makes answers longer and worse (measured; docs/recipes.md). SmolLM2-135M-Instruct starts low: it
answers wordily ("The numbers are 32, 26, 20.", "11 + 16 = 22") and often wrong; both parts can be learned.

Known loophole, kept so that measured runs stay comparable: for `larger` the first number named counts as the answer,
so a restatement that names the larger number first ("45 - 44 = ...") earns the correctness half. PPO on SmolLM2 found
some of these (docs/recipes.md).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

CHAT_TASKS = ("add", "larger", "count", "sort")

WORDS = ("apple", "river", "stone", "cloud", "tiger", "bread", "chair", "green", "house", "light", "music", "ocean",
         "paper", "queen", "smile", "table", "water", "zebra", "candle", "garden", "pencil", "rocket", "silver",
         "window", "yellow", "forest", "guitar", "planet", "orange", "basket")

_ADD = re.compile(r"What is (\d+) plus (\d+)\? Answer with the number only\.")
_COUNT = re.compile(r"How many words are in this list: ([a-z, ]+)\? Answer with the number only\.")
_SORT = re.compile(r"Sort these numbers from smallest to largest: ([\d, ]+)\. Answer with the numbers only, "
                   r"separated by commas\.")
_LARGER = re.compile(r"Which number is larger, (\d+) or (\d+)\? Answer with the number only\.")
_NUMBER = re.compile(r"-?\d+")


@dataclass(frozen=True)
class ChatProblem:
    task: str
    args: tuple

    @property
    def instruction(self) -> str:
        if self.task == "add":
            return f"What is {self.args[0]} plus {self.args[1]}? Answer with the number only."
        if self.task == "count":
            return f"How many words are in this list: {', '.join(self.args)}? Answer with the number only."
        if self.task == "sort":
            return (f"Sort these numbers from smallest to largest: {', '.join(map(str, self.args))}. "
                    "Answer with the numbers only, separated by commas.")
        if self.task == "larger":
            return f"Which number is larger, {self.args[0]} or {self.args[1]}? Answer with the number only."
        raise ValueError(f"Unknown chat task {self.task!r}; expected one of {CHAT_TASKS}.")

    @property
    def answer(self) -> str:
        """The ideal (bare) answer text."""
        if self.task == "add":
            return str(self.args[0] + self.args[1])
        if self.task == "count":
            return str(len(self.args))
        if self.task == "sort":
            return ", ".join(map(str, sorted(self.args)))
        return str(max(self.args))


def sample_chat_problem(rng: random.Random, tasks=CHAT_TASKS) -> ChatProblem:
    task = rng.choice(tasks)
    if task == "add":
        return ChatProblem(task, (rng.randint(1, 20), rng.randint(1, 20)))
    if task == "larger":
        return ChatProblem(task, tuple(rng.sample(range(1, 50), 2)))
    if task == "count":
        return ChatProblem(task, tuple(rng.sample(WORDS, rng.randint(2, 5))))
    if task == "sort":
        return ChatProblem(task, tuple(rng.sample(range(1, 20), rng.randint(3, 4))))
    raise ValueError(f"Unknown chat task {task!r}; expected one of {CHAT_TASKS}.")


def parse_chat_prompt(prompt) -> ChatProblem | None:
    """The problem stated in a prompt (text, rendered chat text or chat messages); None if it states none."""
    if isinstance(prompt, list):
        prompt = next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")
    if m := _ADD.search(prompt):
        return ChatProblem("add", (int(m.group(1)), int(m.group(2))))
    if m := _COUNT.search(prompt):
        return ChatProblem("count", tuple(w.strip() for w in m.group(1).split(",")))
    if m := _SORT.search(prompt):
        return ChatProblem("sort", tuple(int(x) for x in _NUMBER.findall(m.group(1))))
    if m := _LARGER.search(prompt):
        return ChatProblem("larger", (int(m.group(1)), int(m.group(2))))
    return None


def extract_chat_answer(text: str):
    """The answer a completion gives, as the exact-match judge compares it: its numbers, else its words.

    "The answer is 19." and "19" both give ``(19,)`` (the judge of SPG's semantic clusters).
    """
    numbers = _NUMBER.findall(text)
    if numbers:
        return tuple(int(n) for n in numbers)
    return tuple(re.findall(r"[a-z]+", text.casefold()))


CORRECT_WEIGHT, CONCISE_WEIGHT = 0.5, 0.5
_BARE = re.compile(r"\s*-?\d+(\s*,\s*-?\d+)*\s*\.?\s*")


def is_correct(problem: ChatProblem, completion: str) -> bool:
    """The completion states the right answer: `sort` — the sorted numbers appear consecutively, in order; `larger` —
    the first number it names is the larger one ("16 is larger than 10"); `add`, `count` — the last number it names
    is the answer ("12 + 14 = 26")."""
    wanted = tuple(int(n) for n in _NUMBER.findall(problem.answer))
    given = tuple(int(n) for n in _NUMBER.findall(completion))
    if not given:
        return False
    if problem.task == "larger":
        return given[0] == wanted[0]
    if problem.task in ("add", "count"):
        return given[-1] == wanted[0]
    k = len(wanted)
    return any(given[i:i + k] == wanted for i in range(len(given) - k + 1))


def is_concise(completion: str) -> bool:
    """A bare answer as the prompts ask: numbers separated by commas, one final period at most."""
    return _BARE.fullmatch(completion) is not None


def score_chat_answer(problem: ChatProblem, completion: str) -> float:
    """0.5 · correct + 0.5 · concise (module docstring)."""
    return CORRECT_WEIGHT * is_correct(problem, completion) + CONCISE_WEIGHT * is_concise(completion)
