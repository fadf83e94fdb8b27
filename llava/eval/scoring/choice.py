"""Multiple-choice answers: the option letter a free-form answer picks (ScienceQA, SEED-Bench, MMBench),
and the choices read from an answers file for the questions of a benchmark, with the unreadable and
unanswered ones counted (ScienceQA, SEED-Bench, the video benchmarks).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from llava.eval.scoring.common import Answer

logger = logging.getLogger(__name__)

_LEADING_LETTER = re.compile(r"^\(?([A-Z])(?:\)|\.|:|,|\s*$)")
# Only "answer is" is case-insensitive: a lowercase "a" after it is an article ("the answer is a cat").
_ANSWER_IS = re.compile(r"(?:(?i:answer is|answer)\s*:?|答案(?:是|为)?\s*[:：]?)\s*\(?([A-Z])\b")


def parse_option_letter(text: str, letters: str = "ABCD", options: list[str] | None = None) -> str | None:
    """Return the option letter a free-form answer picks, or None when it cannot be read.

    Accepted, in order: a bare letter ("B"), a leading letter followed by punctuation ("B.",
    "(B)", "B: cat", "B) cat"), "The answer is B." / "Answer: B", and, when `options` (the
    option texts, in letter order) are given, an answer that is exactly one option's text.
    A letter outside `letters` (say "E" for a four-option question) is not an answer. A leading
    "A " is not read as a letter: "A dog" is an article, not option A.
    """
    cleaned = text.strip()
    match = _LEADING_LETTER.match(cleaned)
    letter = match.group(1) if match else None
    if letter is None:
        match = _ANSWER_IS.search(cleaned)
        if match:
            letter = match.group(1)
    if letter is None and options is not None:
        wanted = _plain(cleaned)
        hits = [letters[i] for i, option in enumerate(options[: len(letters)]) if _plain(option) == wanted]
        letter = hits[0] if len(hits) == 1 else None
    return letter if letter is not None and letter in letters else None


def _plain(text: str) -> str:
    return " ".join(text.lower().rstrip(".").split())


C = TypeVar("C")


@dataclass(frozen=True)
class Choices(Generic[C]):
    """What `read_choices` read: the choice per answered question (None when unreadable), the answer
    texts no choice could be read from, and how many questions have no answer."""

    chosen: dict[str, C | None]
    unreadable: dict[str, str]
    missing: int


def read_choices(
    answers: Mapping[str, Answer], question_ids: Sequence[str], what: str, read: Callable[[str, str], C | None]
) -> Choices[C]:
    """Read the choice of each answer to one of `question_ids`, in answers-file order.

    `read(question_id, text)` is the benchmark's reading of one answer (a letter, an option index),
    None when it finds no valid choice. Unanswered questions count as wrong in every scorer that
    uses this, as in LLaVA's and IG-VLM's: they are counted, and logged as a warning that names
    them as `what` ("problems of split 'test'").
    """
    wanted = set(question_ids)
    chosen: dict[str, C | None] = {}
    unreadable: dict[str, str] = {}
    for qid, answer in answers.items():
        if qid not in wanted:
            continue
        chosen[qid] = read(qid, answer.text)
        if chosen[qid] is None:
            unreadable[qid] = answer.text
    missing = len(question_ids) - len(chosen)
    if missing:
        logger.warning("%d of %d %s have no answer; counted wrong", missing, len(question_ids), what)
    return Choices(chosen, unreadable, missing)
