"""MME: perception and cognition scores from paired yes/no questions.

    python -m llava.eval.scoring.mme --answers answers.jsonl --gt-dir MME_Benchmark_release_version \\
        [--write-eval-tool-dir eval_tool/answers/EXPERIMENT] [--output results.json]
    python -m llava.eval.scoring.mme --eval-tool-dir eval_tool/answers/EXPERIMENT

Inputs (what LLaVA's `convert_answer_to_mme.py` and MME's `calculation.py` use):

- answers: LLaVA JSONL whose `question_id` is the image path under the MME root, e.g.
  "artwork/10002.jpg" or "celebrity/images/tt0032138_shot_0395_img_0.jpg" (the first component is
  the subtask, the file stem names the question file), `prompt` the question and `text` the answer;
- the MME release folder: one folder per subtask holding, per image, `<stem>.txt` with two lines
  "question<TAB>Yes|No" (subtasks with an `images/` folder keep them in `questions_answers_YN/`);
- or, instead of both, MME's eval_tool folder: `<subtask>.txt` with lines
  "image<TAB>question<TAB>ground truth<TAB>prediction" (`--write-eval-tool-dir` writes it, so the
  official `calculation.py` can be run on the same predictions).

The prompt is matched to the ground-truth question after dropping LLaVA's "Answer the question
using a single word or phrase." suffix and comparing whitespace-normalised text (MME's files
sometimes have two spaces before "Please answer yes or no."). A prediction is read as in
`calculation.py`: lowercased, "yes"/"no" as is, else "yes" or "no" found in its first four
characters, else "other" (always wrong). Per subtask: acc = fraction of questions right, acc+ =
fraction of images with both questions right, score = 100 * acc + 100 * acc+ (max 200).
Perception is the sum over its 10 subtasks (max 2000), cognition over its 4 (max 800).
"""

from __future__ import annotations

import argparse
import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llava.eval.scoring.common import (
    ScoringError,
    add_output_arguments,
    mean,
    print_metrics,
    read_answers,
    run_cli,
    write_outputs,
)

logger = logging.getLogger(__name__)

PERCEPTION = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
_LLAVA_SUFFIX = "Answer the question using a single word or phrase."


@dataclass(frozen=True)
class MMERecord:
    """One answered question: `image` groups the pair of questions asked about the same image."""

    subtask: str
    image: str
    question: str
    gt: str
    prediction: str


@dataclass(frozen=True)
class SubtaskScore:
    acc: float
    acc_plus: float
    score: float
    num_images: int
    num_other: int


def parse_prediction(text: str) -> str:
    """MME's reading of an answer: "yes", "no" or "other"."""
    text = text.lower()
    if text in ("yes", "no"):
        return text
    prefix = text[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


def score_subtask(records: Sequence[MMERecord]) -> SubtaskScore:
    """acc, acc+ and score of one subtask; every image must have exactly two questions."""
    by_image: dict[str, list[bool]] = defaultdict(list)
    other = 0
    for record in records:
        gt = record.gt.lower()
        if gt not in ("yes", "no"):
            raise ScoringError(f"MME {record.subtask}/{record.image}: ground truth must be yes/no, got {record.gt!r}")
        prediction = parse_prediction(record.prediction)
        other += prediction == "other"
        by_image[record.image].append(prediction == gt)
    for image, results in by_image.items():
        if len(results) != 2:
            raise ScoringError(
                f"MME {records[0].subtask}: image {image!r} has {len(results)} answered questions, expected 2"
            )
    questions = [ok for results in by_image.values() for ok in results]
    acc = mean(questions)
    acc_plus = mean([all(results) for results in by_image.values()])
    return SubtaskScore(acc, acc_plus, 100 * acc + 100 * acc_plus, len(by_image), other)


def score_all(records: Sequence[MMERecord]) -> dict[str, Any]:
    """Subtask scores and the perception / cognition totals (sums over the subtasks present)."""
    by_subtask: dict[str, list[MMERecord]] = defaultdict(list)
    for record in records:
        if record.subtask not in PERCEPTION + COGNITION:
            raise ScoringError(f"MME: unknown subtask {record.subtask!r}; known: {list(PERCEPTION + COGNITION)}")
        by_subtask[record.subtask].append(record)
    subtasks = {name: score_subtask(by_subtask[name]) for name in PERCEPTION + COGNITION if name in by_subtask}
    missing = [name for name in PERCEPTION + COGNITION if name not in subtasks]
    if missing:
        logger.warning("MME subtasks without answers (left out of the totals): %s", missing)
    return {
        "perception": sum(subtasks[name].score for name in PERCEPTION if name in subtasks),
        "cognition": sum(subtasks[name].score for name in COGNITION if name in subtasks),
        "subtasks": subtasks,
        "missing_subtasks": missing,
    }


def _tab_separated(txt: Path, layout: Sequence[str]) -> Iterator[list[str]]:
    """The fields of each non-blank line of an MME text file; a line without exactly the fields of
    `layout` (their names, for the message) is an error naming it."""
    for number, line in enumerate(txt.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(layout):
            raise ScoringError(f"{txt}:{number}: expected {'<TAB>'.join(layout)}, got {len(fields)} fields: {line!r}")
        yield fields


def _question_key(question: str) -> str:
    return " ".join(question.replace(_LLAVA_SUFFIX, "").split())


def load_ground_truth(gt_dir: str | Path) -> dict[tuple[str, str, str], str]:
    """(subtask, question file stem, normalised question) -> "Yes"/"No" from the MME release folder."""
    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise ScoringError(f"{gt_dir}: MME ground-truth folder not found")
    gt: dict[tuple[str, str, str], str] = {}
    for subtask in PERCEPTION + COGNITION:
        folder = gt_dir / subtask
        if (folder / "questions_answers_YN").is_dir():
            folder = folder / "questions_answers_YN"
        if not folder.is_dir():
            continue
        for txt in sorted(folder.glob("*.txt")):
            for question, answer in _tab_separated(txt, ("question", "answer")):
                gt[(subtask, txt.stem, _question_key(question))] = answer.strip()
    if not gt:
        raise ScoringError(f"{gt_dir}: no MME question files found under the subtask folders {list(PERCEPTION)}...")
    return gt


def records_from_answers(answers_file: str | Path, gt_dir: str | Path) -> list[MMERecord]:
    """Join LLaVA answers to the ground truth (see the module docstring for the layout)."""
    gt = load_ground_truth(gt_dir)
    records = []
    for answer in read_answers(answers_file):
        parts = answer.question_id.split("/")
        if len(parts) < 2:
            raise ScoringError(
                f"{answers_file}:{answer.line}: question_id {answer.question_id!r} is not 'subtask/.../image'"
            )
        subtask, image = parts[0], parts[-1]
        question = answer.record.get("prompt")
        if not isinstance(question, str):
            raise ScoringError(f"{answers_file}:{answer.line}: MME answers need the question in 'prompt'")
        key = (subtask, Path(image).stem, _question_key(question))
        if key not in gt:
            raise ScoringError(
                f"{answers_file}:{answer.line}: question {question!r} about {answer.question_id!r} "
                f"is not in {gt_dir}/{subtask} ({Path(image).stem}.txt)"
            )
        records.append(MMERecord(subtask, image, question.replace(_LLAVA_SUFFIX, "").strip(), gt[key], answer.text))
    return records


def read_eval_tool_dir(folder: str | Path) -> list[MMERecord]:
    """Records from MME eval_tool result files `<subtask>.txt` (image, question, gt, prediction)."""
    folder = Path(folder)
    records = []
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise ScoringError(f"{folder}: no <subtask>.txt result files")
    for txt in files:
        for fields in _tab_separated(txt, ("image", "question", "ground truth", "prediction")):
            records.append(MMERecord(txt.stem, *fields))
    return records


def write_eval_tool_dir(records: Sequence[MMERecord], folder: str | Path) -> None:
    """Write the eval_tool layout; newlines and tabs in predictions become spaces to keep one line each."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    by_subtask: dict[str, list[MMERecord]] = defaultdict(list)
    for record in records:
        by_subtask[record.subtask].append(record)
    for subtask, items in by_subtask.items():
        # calculation.py pairs consecutive lines, so the two questions of an image must be adjacent.
        items = sorted(items, key=lambda r: r.image)
        lines = ["\t".join((r.image, r.question, r.gt, " ".join(r.prediction.split()))) + "\n" for r in items]
        (folder / f"{subtask}.txt").write_text("".join(lines), encoding="utf-8")


def results_dict(scores: dict[str, Any]) -> dict[str, Any]:
    return {
        "benchmark": "mme",
        "metric": "perception_score",
        "score": scores["perception"],
        "perception": scores["perception"],
        "cognition": scores["cognition"],
        "subtasks": {
            name: {"acc": 100 * s.acc, "acc_plus": 100 * s.acc_plus, "score": s.score, "images": s.num_images}
            for name, s in scores["subtasks"].items()
        },
        "missing_subtasks": scores["missing_subtasks"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--answers", help="LLaVA answers JSONL (needs --gt-dir)")
    parser.add_argument("--gt-dir", help="MME_Benchmark_release_version")
    parser.add_argument("--eval-tool-dir", help="score MME eval_tool result files instead")
    parser.add_argument("--write-eval-tool-dir", help="also write the eval_tool result files here")
    add_output_arguments(parser, "{question_id: correct}")
    args = parser.parse_args(argv)

    if args.eval_tool_dir is not None:
        if args.answers or args.gt_dir:
            parser.error("give either --eval-tool-dir or --answers with --gt-dir")
        records = read_eval_tool_dir(args.eval_tool_dir)
    elif args.answers and args.gt_dir:
        records = records_from_answers(args.answers, args.gt_dir)
    else:
        parser.error("give --answers and --gt-dir, or --eval-tool-dir")
    if args.write_eval_tool_dir:
        write_eval_tool_dir(records, args.write_eval_tool_dir)
    results = results_dict(score_all(records))
    print_metrics("MME", {"perception": results["perception"], "cognition": results["cognition"]})
    for name, subtask in results["subtasks"].items():
        print(f"  {name}: {subtask['score']:.2f} (acc {subtask['acc']:.2f}, acc+ {subtask['acc_plus']:.2f})")
    per_sample = {
        f"{r.subtask}/{r.image}/{r.question}": parse_prediction(r.prediction) == r.gt.lower() for r in records
    }
    write_outputs(results, per_sample, args.output, args.per_sample)
    return results


if __name__ == "__main__":
    run_cli(main)
