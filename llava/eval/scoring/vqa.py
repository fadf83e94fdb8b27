"""VQA answer normalisation and the 10-annotator accuracy, shared by TextVQA, VizWiz and VQAv2, and the
`score` / `submit` command line of the two whose test split a server grades (VQAv2, VizWiz).

The normalisation is the one LLaVA scores and submits with (the EvalAI answer processor of
`m4c_evaluator.py`), which is the official VQA evaluation's `processPunctuation` and
`processDigitArticle` preceded by a tokenising step:

1. tokenise: lowercase, delete "," and "?", split the possessive "'s" off ("man's" -> "man 's");
2. newlines and tabs become spaces, surrounding whitespace is stripped;
3. punctuation: each of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` is deleted when it touches a
   space in the text (or the text has a comma between digits, "1,000"), else replaced by a space;
   then every period *not followed by a digit* is deleted ("dogs." -> "dogs", "1.5" kept);
4. words: number words "none"/"zero".."ten" become digits, the articles a/an/the are dropped,
   and unapostrophised contractions get their apostrophe back ("dont" -> "don't").

The official period regex is ``(?!<=\\d)(\\.)(?!\\d)``: its "lookbehind" is a typo that never
matches, so only the lookahead acts. We reproduce what it does, not what it meant.
"""

from __future__ import annotations

import argparse
import logging
import re
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from llava.eval.scoring.common import (
    ScoringError,
    add_output_arguments,
    mean,
    print_metrics,
    read_answers_by_id,
    write_outputs,
    write_submission,
)

logger = logging.getLogger(__name__)

_PUNCTUATION = ';/[]"{}()=+\\_-><@`,?!'  # one character each; the order does not matter
_COMMA_BETWEEN_DIGITS = re.compile(r"(?<=\d),+(?=\d)")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
_ARTICLES = {"a", "an", "the"}
_NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
# The official table, quirks included ("somebody'd" -> "somebodyd", capitalised keys that can
# never match lowercased text): changing it would change scores against published numbers.
# fmt: off
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
# fmt: on


def process_punctuation(text: str) -> str:
    """Step 3 of the normalisation (the official `processPunctuation`)."""
    # Decided once for the whole text, as the official code does: "1,000" makes every mark vanish.
    digit_comma = _COMMA_BETWEEN_DIGITS.search(text) is not None
    out = text
    for mark in _PUNCTUATION:
        touches_space = f"{mark} " in text or f" {mark}" in text
        out = out.replace(mark, "" if touches_space or digit_comma else " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out)


def process_digit_article(text: str) -> str:
    """Step 4 of the normalisation (the official `processDigitArticle`)."""
    words = [_NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words)


def normalize_answer(text: str) -> str:
    """Normalise a predicted or human answer for exact matching (see the module docstring).

    >>> normalize_answer("Two dogs.")
    '2 dogs'
    """
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def vqa_accuracy(pred: str, gt_answers: Sequence[str]) -> float:
    """The VQA accuracy of one prediction against the human answers (10 in VQAv2/TextVQA/VizWiz).

    For each human left out in turn, the prediction scores min(#matches among the others / 3, 1);
    the accuracy is the mean over the leave-one-out subsets. With 10 humans: 1 match -> 0.3,
    2 -> 0.6, 3 -> 0.9, 4 or more -> 1.0. Both sides are normalised with `normalize_answer`.
    """
    if not gt_answers:
        raise ValueError("vqa_accuracy needs at least one human answer")
    predicted = normalize_answer(pred)
    humans = [normalize_answer(answer) for answer in gt_answers]
    matches = sum(human == predicted for human in humans)
    # Leaving out a matching human leaves matches-1 among the others, any other human leaves matches.
    subset_scores = [min((matches - (human == predicted)) / 3, 1.0) for human in humans]
    return sum(subset_scores) / len(subset_scores)


def human_answers(
    entries: Sequence[Any], key: str, path: str | Path, where: str = ""
) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Human answers and answer type per `key` from annotation entries `{key, "answers": [{"answer"}, ...],
    "answer_type"}`, the layout VQAv2 (keyed by question id) and VizWiz (keyed by image) share.

    `where` names the list in the file for the messages ("annotations" for `annotations[3]`). An
    entry without answers is an error here, naming it, rather than in `vqa_accuracy` at scoring time.
    """
    answers: dict[str, list[str]] = {}
    types: dict[str, str] = {}
    for i, entry in enumerate(entries):
        try:
            name = str(entry[key])
            answers[name] = [a["answer"] for a in entry["answers"]]
        except (KeyError, TypeError):
            raise ScoringError(
                f"{path}: {where}[{i}] needs {key!r} and 'answers' [{{'answer': ...}}], got {entry!r:.160}"
            ) from None
        if not answers[name]:
            raise ScoringError(f"{path}: {where}[{i}] ({key} {name}) has no answers")
        types[name] = entry.get("answer_type", "unknown")
    return answers, types


def evaluate_vqa(
    benchmark: str,
    answers_path: str | Path,
    gt_answers: Mapping[str, Sequence[str]],
    annotation_path: str | Path,
    answer_types: Mapping[str, str] | None = None,
) -> tuple[dict[str, Any], dict[str, float]]:
    """Score an answers file against human answers keyed by question id.

    Returns the `results.json` content (accuracies in percent, per answer type when `answer_types`
    is given) and the accuracy in [0, 1] per answered question. Every answer must name an annotated
    question (else a ScoringError naming the line and id); annotated questions without an answer
    are left out of the mean, as the official evaluation does, and counted in `num_unanswered`
    (with a warning) so a truncated run is noticed.
    """
    by_id = read_answers_by_id(answers_path, gt_answers, f"the annotations {annotation_path}")
    per_sample = {qid: vqa_accuracy(answer.text, gt_answers[qid]) for qid, answer in by_id.items()}
    by_type: dict[str, list[float]] = defaultdict(list)
    for qid, score in per_sample.items():
        if answer_types is not None:
            by_type[answer_types[qid]].append(score)
    unanswered = len(gt_answers) - len(by_id)
    if unanswered:
        logger.warning("%d of %d annotated questions have no answer in %s", unanswered, len(gt_answers), answers_path)
    results = {
        "benchmark": benchmark,
        "metric": "vqa_accuracy",
        "score": 100.0 * mean(per_sample.values()),
        "accuracy_per_answer_type": {name: 100.0 * mean(scores) for name, scores in sorted(by_type.items())},
        "num_answered": len(per_sample),
        "num_unanswered": unanswered,
    }
    return results, per_sample


def fill_submission(question_ids: Sequence[str], answers_path: str | Path, question_path: str | Path) -> dict[str, str]:
    """Normalised answer per test question id, "" for unanswered ones (counted in a warning).

    Test servers reject a submission that lacks any test question, so missing answers are filled
    rather than dropped; an answer to a question not in the test file is an error.
    """
    by_id = read_answers_by_id(answers_path, set(question_ids), f"the question file {question_path}")
    missing = [qid for qid in question_ids if qid not in by_id]
    if missing:
        logger.warning(
            "%d of %d test questions have no answer in %s; submitting '' for them (first: %s)",
            len(missing),
            len(question_ids),
            answers_path,
            missing[0],
        )
    return {qid: normalize_answer(by_id[qid].text) if qid in by_id else "" for qid in question_ids}


def vqa_parser(
    description: str, score: tuple[str, Mapping[str, str | None]], submit: tuple[str, str]
) -> argparse.ArgumentParser:
    """The command line of a benchmark scored here on an annotated split and graded by a server on its test
    split (VQAv2, VizWiz), which `run_vqa_command` runs.

    `score` is the help of the `score` command and its input flags (flag -> help), asked before the
    answers and the output flags; `submit` is the help of the `submit` command and of its test questions.
    """
    parser = argparse.ArgumentParser(description=description)
    commands = parser.add_subparsers(dest="command", required=True)
    score_help, inputs = score
    score_command = commands.add_parser("score", help=score_help)
    for flag, flag_help in inputs.items():
        score_command.add_argument(flag, required=True, help=flag_help)
    score_command.add_argument("--answers", required=True)
    add_output_arguments(score_command, "{question_id: accuracy}")
    submit_help, questions_help = submit
    submit_command = commands.add_parser("submit", help=submit_help)
    submit_command.add_argument("--question-file", required=True, help=questions_help)
    submit_command.add_argument("--answers", required=True)
    submit_command.add_argument("--output", required=True, help="submission JSON to write")
    return parser


def run_vqa_command(
    args: argparse.Namespace,
    title: str,
    evaluate: Callable[[argparse.Namespace], tuple[dict[str, Any], dict[str, float]]],
    submission: Callable[[str, str], Collection[Any]],
) -> dict[str, Any] | None:
    """Run what `vqa_parser` parsed: `submit` writes `submission(question_file, answers)`; `score` prints
    the accuracy overall and per answer type from `evaluate(args)` and writes the results files."""
    if args.command == "submit":
        write_submission(args.output, submission(args.question_file, args.answers))
        return None
    results, per_sample = evaluate(args)
    print_metrics(f"{title} {args.answers}", {"accuracy": results["score"], **results["accuracy_per_answer_type"]})
    write_outputs(results, per_sample, args.output, args.per_sample)
    return results
