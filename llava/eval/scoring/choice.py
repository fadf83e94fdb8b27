"""Multiple-choice answers: the option letter a free-form answer picks (ScienceQA, SEED-Bench, MMBench),
and the letters of an answers file for the questions of a benchmark (ScienceQA, SEED-Bench).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Letters:
    """What `read_letters` read: the letter per answered question (None when unreadable), the answer
    texts no letter could be read from, and how many questions have no answer."""

    letters: dict[str, str | None]
    unreadable: dict[str, str]
    missing: int


def read_letters(
    answers: Mapping[str, Answer],
    question_ids: Sequence[str],
    what: str,
    letters: Mapping[str, str] | None = None,
) -> Letters:
    """Read the option letter of each answer to one of `question_ids`, in answers-file order.

    `letters` gives the valid letters per question ("ABCD" when not given); a letter outside them is
    unreadable. Unanswered questions count as wrong in the scorers that use this, as in LLaVA's: they
    are counted, and logged as a warning that names them as `what` ("problems of split 'test'").
    """
    wanted = set(question_ids)
    read: dict[str, str | None] = {}
    unreadable: dict[str, str] = {}
    for qid, answer in answers.items():
        if qid not in wanted:
            continue
        read[qid] = parse_option_letter(answer.text, letters[qid] if letters is not None else "ABCD")
        if read[qid] is None:
            unreadable[qid] = answer.text
    missing = len(question_ids) - len(read)
    if missing:
        logger.warning("%d of %d %s have no answer; counted wrong", missing, len(question_ids), what)
    return Letters(read, unreadable, missing)
