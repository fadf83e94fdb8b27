"""LLaVA-Bench (COCO and In-the-Wild): GPT-review inputs, optional GPT reviews, and their summary.

    python -m llava.eval.scoring.llava_bench review --questions questions.jsonl --context context.jsonl \\
        --reference answers_gpt4.jsonl --answers answers.jsonl --rule rule.json --output reviews.jsonl \\
        [--judge-model gpt-4-0314]
    python -m llava.eval.scoring.llava_bench summarize --reviews reviews.jsonl [--output results.json]

Inputs are LLaVA's LLaVA-Bench files: questions JSONL (`question_id`, `image`, `text`,
`category` conv|detail|complex), context JSONL (`image`, `caption`: a string or a list of
captions), the reference (GPT-4) answers and the model's answers (matched by `question_id`), and
LLaVA's `rule.json` (`{"llava_bench_<category>": {"role", "prompt"}}`). Without `--judge-model`,
`review` only writes the judge prompts (`{"question_id", "category", "prompt"}` per line) and
nothing leaves the machine; with it, each line also gets the judge's reply (`content`) and the
two scores it gave (`tuple`: [reference, model]), as LLaVA's `eval_gpt_review_bench.py` writes.

`summarize` reports per category and overall: the mean reference and model scores and the
relative score 100 * mean(model) / mean(reference) (LLaVA's `summarize_gpt_review.py`). Reviews
whose scores could not be read (tuple [-1, -1]) are left out and counted, instead of dragging
the means down as in the original.
"""

from __future__ import annotations

import argparse
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llava.eval.scoring.common import (
    ScoringError,
    add_output_arguments,
    mean,
    print_metrics,
    read_answers_by_id,
    read_json,
    read_jsonl,
    run_cli,
    write_jsonl,
    write_outputs,
)
from llava.eval.scoring.judge import Judge, openai_judge

logger = logging.getLogger(__name__)


def build_review_prompt(context: str, question: str, reference: str, answer: str, role: str, instruction: str) -> str:
    """The judge prompt of LLaVA's eval_gpt_review_bench.py: assistant 1 is the reference, 2 the model."""
    return (
        f"[Context]\n{context}\n\n"
        f"[Question]\n{question}\n\n"
        f"[{role} 1]\n{reference}\n\n[End of {role} 1]\n\n"
        f"[{role} 2]\n{answer}\n\n[End of {role} 2]\n\n"
        f"[System]\n{instruction}\n\n"
    )


def parse_review_scores(review: str) -> list[float] | None:
    """The two scores on the first line of a review ("8 6" or "8, 6"), None when unreadable."""
    first_line = review.split("\n")[0].replace(",", " ").split()
    if len(first_line) != 2:
        return None
    try:
        return [float(first_line[0]), float(first_line[1])]
    except ValueError:
        return None


def summarize(reviews: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean scores and relative score (percent) per category and for "all" reviews."""
    by_category: dict[str, list[list[float]]] = defaultdict(list)
    failed = 0
    for review in reviews:
        scores = review["tuple"]
        if scores is None or list(scores) == [-1, -1]:
            failed += 1
            continue
        by_category[review.get("category", "all")].append(scores)
        if "category" in review:
            by_category["all"].append(scores)
    if failed:
        logger.warning("%d reviews have unreadable scores and are left out", failed)
    summary = {}
    for category, pairs in sorted(by_category.items()):
        reference = mean([p[0] for p in pairs])
        model = mean([p[1] for p in pairs])
        summary[category] = {
            "relative": 100.0 * model / reference if reference else 0.0,
            "reference": reference,
            "model": model,
            "count": len(pairs),
        }
    return summary


def _index_jsonl(path: str | Path, key: str) -> dict[str, dict[str, Any]]:
    """Rows keyed by `key`; unlike a question file (`read_question_jsonl`), a repeated key is not an error:
    the context file is keyed by image, and LLaVA's reviewer lets a later line win."""
    rows: dict[str, dict[str, Any]] = {}
    for number, row in read_jsonl(path):
        if key not in row:
            raise ScoringError(f"{path}:{number}: missing {key!r} (keys: {sorted(row)})")
        rows[str(row[key])] = row
    return rows


def review(
    questions_file: str | Path,
    context_file: str | Path,
    reference_file: str | Path,
    answers_file: str | Path,
    rule_file: str | Path,
    judge: Judge | None = None,
) -> list[dict[str, Any]]:
    """One review record per question: the judge prompt, plus the judge's reply and scores when judged."""
    contexts = _index_jsonl(context_file, "image")
    references = read_answers_by_id(reference_file)
    answers = read_answers_by_id(answers_file)
    rules = read_json(rule_file)
    records = []
    for number, question in read_jsonl(questions_file):
        qid = str(question.get("question_id"))
        category = f"llava_bench_{question.get('category')}"
        for source, table in ((reference_file, references), (answers_file, answers)):
            if qid not in table:
                raise ScoringError(f"{questions_file}:{number}: question_id {qid!r} has no answer in {source}")
        if category not in rules:
            raise ScoringError(f"{questions_file}:{number}: category {category!r} is not in {rule_file}")
        if question.get("image") not in contexts:
            raise ScoringError(f"{questions_file}:{number}: image {question.get('image')!r} is not in {context_file}")
        caption = contexts[question["image"]]["caption"]
        prompt = build_review_prompt(
            "\n".join(caption) if isinstance(caption, list) else caption,
            question["text"],
            references[qid].text,
            answers[qid].text,
            rules[category]["role"],
            rules[category]["prompt"],
        )
        record: dict[str, Any] = {"question_id": question["question_id"], "category": category, "prompt": prompt}
        if judge is not None:
            reply = judge(prompt)
            scores = parse_review_scores(reply)
            record.update(content=reply, tuple=scores if scores is not None else [-1, -1])
        records.append(record)
    return records


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    rev = commands.add_parser("review", help="write judge prompts, and judge them with --judge-model")
    rev.add_argument("--questions", required=True)
    rev.add_argument("--context", required=True)
    rev.add_argument("--reference", required=True, help="reference (GPT-4) answers JSONL")
    rev.add_argument("--answers", required=True)
    rev.add_argument("--rule", required=True, help="LLaVA's rule.json")
    rev.add_argument("--output", required=True, help="reviews JSONL to write")
    rev.add_argument("--judge-model", help="OpenAI model to judge with (off by default: prompts only)")
    summ = commands.add_parser("summarize", help="relative scores from a reviews JSONL")
    summ.add_argument("--reviews", required=True)
    add_output_arguments(summ, None)
    args = parser.parse_args(argv)

    if args.command == "review":
        judge = openai_judge(args.judge_model) if args.judge_model else None
        records = review(args.questions, args.context, args.reference, args.answers, args.rule, judge)
        write_jsonl(args.output, records)
        print(f"wrote {len(records)} {'reviews' if judge else 'judge prompts'} to {args.output}")
        return None
    reviews = []
    for number, row in read_jsonl(args.reviews):
        if "tuple" not in row:
            raise ScoringError(f"{args.reviews}:{number}: review has no 'tuple' of scores (was it judged?)")
        reviews.append(row)
    summary = summarize(reviews)
    if "all" not in summary:
        raise ScoringError(f"{args.reviews}: no review with readable scores")
    results = {"benchmark": "llava_bench", "metric": "relative_score", "score": summary["all"]["relative"]}
    results["per_category"] = summary
    for category, values in summary.items():
        print_metrics(f"LLaVA-Bench {category}", values)
    write_outputs(results, None, args.output, None)
    return results


if __name__ == "__main__":
    run_cli(main)
