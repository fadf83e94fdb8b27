"""Scoring: a prediction is right when it is the gold single-word answer, ignoring case and punctuation."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

from llava.data.shapes.questions import DIFFICULTIES, QUESTION_TYPES

# A model that spells a count out is as right as one that writes the digit the data set uses.
_NUMBER_WORDS = {"zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6"}


def normalize_answer(text: str) -> str:
    """Lower-case, punctuation dropped, whitespace collapsed, number words as digits ("Three." -> "3")."""
    words = re.sub(r"[^\w\s]", " ", text.lower()).split()
    return " ".join(_NUMBER_WORDS.get(word, word) for word in words)


def answer_matches(pred: str, gold: str) -> bool:
    """Whether a prediction is the gold single-word answer, ignoring case and punctuation."""
    return normalize_answer(pred) == normalize_answer(gold)


def _accuracy(correct: int, total: int) -> dict:
    return {"accuracy": correct / total if total else 0.0, "correct": correct, "total": total}


def score(records: Sequence[dict], predictions: dict[str, str]) -> dict:
    """Accuracy overall, per difficulty and per question type; a missing prediction counts as wrong."""
    correct: Counter[str] = Counter()
    total: Counter[str] = Counter()
    missing = 0
    for record in records:
        pred = predictions.get(record["id"])
        missing += pred is None
        ok = pred is not None and answer_matches(pred, record["conversations"][1]["value"])
        for key in ("all", record["difficulty"], record["question_type"]):
            total[key] += 1
            correct[key] += ok
    return {
        **_accuracy(correct["all"], total["all"]),
        "missing": missing,
        "by_difficulty": {d: _accuracy(correct[d], total[d]) for d in DIFFICULTIES if total[d]},
        "by_question_type": {q: _accuracy(correct[q], total[q]) for q in QUESTION_TYPES if total[q]},
    }
