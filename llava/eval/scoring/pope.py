"""POPE: yes/no object-hallucination probing, scored per split (adversarial, popular, random).

    python -m llava.eval.scoring.pope --answers answers.jsonl \\
        --labels adversarial=coco_pope_adversarial.json --labels popular=coco_pope_popular.json \\
        --labels random=coco_pope_random.json [--question-file llava_pope_test.jsonl --match order] \\
        [--output results.json] [--per-sample per_sample.json]

A label file is POPE's JSONL, one `{"question_id", "label": "yes"|"no", ...}` per line. By
default answers are matched to labels by `question_id`. LLaVA's POPE question file numbers its
questions differently from the label files and its scorer pairs them by position instead: pass
`--question-file` (LLaVA's JSONL with a `category` per question) to route each answer to the
split named by its category, and `--match order` to pair a split's answers with its label lines in
file order (their counts must agree).

A prediction is read as LLaVA does: keep the text before the first ".", drop commas, and answer
"no" when a word is "no", "No" or "not", else "yes". Reported per split: accuracy, precision,
recall and F1 with "yes" as the positive class, and the share of "yes" predictions; the headline
`score` is the mean F1 over the splits, in percent (the number the M3 and LLaVA papers report).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llava.eval.scoring.common import (
    Answer,
    ScoringError,
    add_output_arguments,
    index_answers,
    print_metrics,
    read_answers,
    read_jsonl,
    read_question_jsonl,
    run_cli,
    write_outputs,
)


def parse_yes_no(text: str) -> str:
    """LLaVA's POPE reading of a free-form answer: "no" if the first sentence negates, else "yes".

    Words are split on any whitespace (LLaVA splits on single spaces, which reads "No\\n" as yes).
    """
    first_sentence = text.split(".")[0].replace(",", "")
    words = first_sentence.split()
    return "no" if any(word in ("No", "no", "not") for word in words) else "yes"


@dataclass(frozen=True)
class PopeMetrics:
    """Binary metrics with "yes" as the positive class; all fractions in [0, 1]."""

    tp: int
    fp: int
    tn: int
    fn: int
    accuracy: float
    precision: float
    recall: float
    f1: float
    yes_ratio: float


def pope_metrics(predictions: Sequence[str], labels: Sequence[str]) -> PopeMetrics:
    """Confusion counts and metrics of yes/no predictions against yes/no labels (same order).

    Precision, recall or F1 with an empty denominator are 0.0 rather than a division error.
    """
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if not labels:
        raise ValueError("POPE metrics of an empty split")
    pairs = list(zip(predictions, labels, strict=True))
    tp = sum(p == "yes" and g == "yes" for p, g in pairs)
    fp = sum(p == "yes" and g == "no" for p, g in pairs)
    tn = sum(p == "no" and g == "no" for p, g in pairs)
    fn = sum(p == "no" and g == "yes" for p, g in pairs)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return PopeMetrics(
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
        accuracy=(tp + tn) / len(pairs),
        precision=precision,
        recall=recall,
        f1=f1,
        yes_ratio=(tp + fp) / len(pairs),
    )


def read_labels(path: str | Path) -> list[tuple[int, str, str]]:
    """(line, question id, label) per line of a POPE label file."""
    labels = []
    for number, row in read_jsonl(path):
        if "question_id" not in row or row.get("label") not in ("yes", "no"):
            raise ScoringError(f"{path}:{number}: need 'question_id' and 'label' yes/no, got {row!r:.160}")
        labels.append((number, str(row["question_id"]), row["label"]))
    return labels


def read_categories(path: str | Path) -> dict[str, str]:
    """Split name (`category`) per question id of LLaVA's POPE question file."""
    return {qid: row["category"] for qid, row in read_question_jsonl(path, ["category"]).items()}


def pair_split(
    split: str,
    answers: Sequence[Answer],
    labels: Sequence[tuple[int, str, str]],
    answers_path: str | Path,
    labels_path: str | Path,
    match: str,
) -> list[tuple[str, Answer, str]]:
    """(label id, answer, label) triples of one split, matched by question id or by order."""
    if match == "order":
        if len(answers) != len(labels):
            raise ScoringError(
                f"{split}: {len(answers)} answers in {answers_path} but {len(labels)} labels in {labels_path}; "
                "matching by order needs equal counts"
            )
        return [(qid, answer, label) for answer, (_, qid, label) in zip(answers, labels, strict=True)]
    by_id = index_answers(answers, answers_path)
    pairs = []
    for number, qid, label in labels:
        if qid not in by_id:
            raise ScoringError(f"{labels_path}:{number}: question_id {qid!r} has no answer in {answers_path}")
        pairs.append((qid, by_id[qid], label))
    return pairs


def evaluate(
    answers_file: str | Path,
    label_files: dict[str, str | Path],
    question_file: str | Path | None = None,
    match: str = "question_id",
) -> tuple[dict[str, Any], dict[str, bool]]:
    """Per-split metrics (percent) and per-question correctness keyed "split/question_id"."""
    if match == "order" and question_file is None:
        raise ScoringError("--match order needs --question-file to know which answers belong to which split")
    answers = read_answers(answers_file)
    categories = read_categories(question_file) if question_file is not None else None
    if categories is not None:
        for answer in answers:
            if answer.question_id not in categories:
                raise ScoringError(
                    f"{answers_file}:{answer.line}: question_id {answer.question_id!r} is not in {question_file}"
                )
    used: set[int] = set()
    splits: dict[str, Any] = {}
    per_sample: dict[str, bool] = {}
    for split, labels_path in label_files.items():
        labels = read_labels(labels_path)
        candidates = answers if categories is None else [a for a in answers if categories[a.question_id] == split]
        pairs = pair_split(split, candidates, labels, answers_file, labels_path, match)
        predictions = [parse_yes_no(answer.text) for _, answer, _ in pairs]
        metrics = pope_metrics(predictions, [label for _, _, label in pairs])
        splits[split] = {k: (100.0 * v if isinstance(v, float) else v) for k, v in asdict(metrics).items()}
        splits[split]["num_questions"] = len(pairs)
        for (qid, answer, label), prediction in zip(pairs, predictions, strict=True):
            used.add(answer.line)
            per_sample[f"{split}/{qid}"] = prediction == label
    # With a question file, answers of splits not asked for are simply not scored.
    unused = [
        a for a in answers if a.line not in used and (categories is None or categories[a.question_id] in label_files)
    ]
    if unused:
        raise ScoringError(
            f"{answers_file}:{unused[0].line}: question_id {unused[0].question_id!r} matches no label of the splits "
            f"{sorted(label_files)} ({len(unused)} such answers)"
        )
    mean_f1 = sum(s["f1"] for s in splits.values()) / len(splits)
    results = {"benchmark": "pope", "metric": "f1_mean_over_splits", "score": mean_f1, "splits": splits}
    return results, per_sample


def _split_file(value: str) -> tuple[str, str]:
    split, sep, path = value.partition("=")
    if not sep or not split or not path:
        raise argparse.ArgumentTypeError(
            f"expected SPLIT=FILE (e.g. adversarial=coco_pope_adversarial.json), got {value!r}"
        )
    return split, path


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--answers", required=True)
    parser.add_argument("--labels", type=_split_file, action="append", required=True, metavar="SPLIT=FILE")
    parser.add_argument("--question-file", help="LLaVA POPE questions with a 'category' (split) per question")
    parser.add_argument("--match", choices=("question_id", "order"), default="question_id")
    add_output_arguments(parser, "{split/question_id: correct}")
    args = parser.parse_args(argv)

    label_files = dict(args.labels)
    if len(label_files) != len(args.labels):
        parser.error("each split may be given once")
    results, per_sample = evaluate(args.answers, label_files, args.question_file, args.match)
    for split, metrics in results["splits"].items():
        print_metrics(f"POPE {split}", metrics)
    print(f"mean F1: {results['score']:.2f}")
    write_outputs(results, per_sample, args.output, args.per_sample)
    return results


if __name__ == "__main__":
    run_cli(main)
