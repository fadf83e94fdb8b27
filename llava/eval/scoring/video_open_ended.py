"""Open-ended video QA and the text-generation benchmark: exact match, and IG-VLM's GPT-judged scores (opt-in).

    python -m llava.eval.scoring.video_open_ended --question-file MSVD_QA.csv --answers answers.jsonl \\
        [--judge-model gpt-3.5-turbo [--reviews reviews.jsonl]] [--output results.json] [--per-sample ps.json]
    python -m llava.eval.scoring.video_open_ended --criterion temporal --question-file Temporal_QA.csv ...
    python -m llava.eval.scoring.video_open_ended --criterion consistency \\
        --question-file Consistency_QA1.csv --answers a1.jsonl --question-file-2 Consistency_QA2.csv --answers-2 a2.jsonl

Answers are matched to the IG-VLM sheet (`video_common`) by `question_id`; the prediction is the
reply as IG-VLM keeps it. Without a judge nothing leaves the machine and the headline `score` is
the exact match: the prediction equals the sheet's answer after VQA normalisation
(`llava.eval.scoring.vqa.normalize_answer`: case, punctuation, articles, number words).
`contains` (the normalised answer appears as whole words in the prediction) is reported beside it.

With `--judge-model` (needs `pip install openai` and OPENAI_API_KEY) each answered question is
judged once under the criterion IG-VLM uses for the benchmark; the judge replies with a Python
dictionary, parsed without evaluating it:

- `match` (MSVD-QA, MSRVTT-QA, ActivityNet-QA, TGIF-FrameQA): does the prediction mean the answer?
  `{'pred': 'yes'|'no', 'score': 0-5}` → accuracy (share of all questions judged "yes") and the
  mean score;
- the text-generation benchmark, `{'score': 0-5}` → mean score: `correctness`, `detail` and `context`
  (Generic_QA: CI, DO, CU), `temporal` (Temporal_QA: TU), and `consistency` (CO: the two
  predictions for the paired questions of Consistency_QA1 and Consistency_QA2, which share ids).

The judge instructions restate IG-VLM's criteria and reply format in this project's words; IG-VLM
asked gpt-3.5-turbo with its own wording and the API's default temperature (here 0), so judged
numbers are close to, not identical with, the published ones. Replies are cached in `--reviews`
(one JSON line per question, written as it comes): a rerun judges only what is missing, or what was
judged on another prompt (a changed answer). An
unanswered question counts as wrong (exact match, accuracy) and is left out of the mean score; an
unreadable reply is left out of the mean score and counts as "no" (`num_unreadable`).
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llava.eval.scoring.common import (
    ScoringError,
    add_output_arguments,
    mean,
    percent,
    print_metrics,
    read_answers_by_id,
    read_jsonl,
    run_cli,
    write_outputs,
)
from llava.eval.scoring.judge import Judge, openai_judge
from llava.eval.scoring.video_common import read_questions, reply_text
from llava.eval.scoring.vqa import normalize_answer

logger = logging.getLogger(__name__)

MAX_SCORE = 5.0

_SCORE_REPLY = (
    "Reply with a Python dictionary and nothing else, with the key 'score' and an integer from 0 to 5 "
    "(5 is best), e.g. {'score': 4}."
)
_INPUT = "Question: {question}\nCorrect answer: {answer}\nPredicted answer: {prediction}\n\n"


@dataclass(frozen=True)
class Criterion:
    """What the judge is asked: its instruction (system prompt) and the reply format it must use."""

    instruction: str
    reply_format: str
    yes_no: bool = False
    paired: bool = False


CRITERIA = {
    "match": Criterion(
        "You judge answers to questions about videos. Decide whether the predicted answer means the same as "
        "the correct answer: judge the meaning, not the wording, and accept synonyms and paraphrases.",
        "Reply with a Python dictionary and nothing else: 'pred' is 'yes' when the prediction means the correct "
        "answer and 'no' otherwise, and 'score' is an integer from 0 to 5 for how well they match (5 is best), "
        "e.g. {'pred': 'yes', 'score': 4}.",
        yes_no=True,
    ),
    "correctness": Criterion(
        "You judge answers to questions about videos for factual accuracy. The predicted answer must agree with "
        "the correct answer and must not state anything false or misread about the video; synonyms and "
        "paraphrases are fine.",
        _SCORE_REPLY,
    ),
    "detail": Criterion(
        "You judge answers to questions about videos for detail orientation. Rate how completely the predicted "
        "answer covers the main points of the correct answer, and how specific rather than generic it is; "
        "synonyms and paraphrases are fine.",
        _SCORE_REPLY,
    ),
    "context": Criterion(
        "You judge answers to questions about videos for contextual understanding. Rate how well the predicted "
        "answer fits the overall context of the video as the correct answer describes it, its main themes and "
        "tone, without information that is out of place; synonyms and paraphrases are fine.",
        _SCORE_REPLY,
    ),
    "temporal": Criterion(
        "You judge answers to questions about videos for temporal understanding. Rate whether the predicted "
        "answer gives the events in the order the correct answer gives them; paraphrases count only when the "
        "order is kept.",
        _SCORE_REPLY,
    ),
    "consistency": Criterion(
        "You judge answers about videos for consistency. Two similar questions were asked about one video and "
        "share one correct answer. Rate whether the two predicted answers agree with each other and with the "
        "correct answer, without contradictions or notable differences in what they say about the video.",
        _SCORE_REPLY,
        paired=True,
    ),
}


@dataclass(frozen=True)
class Item:
    """One question (or consistency pair) with its prediction(s); `predictions` is empty when unanswered."""

    question_id: str
    questions: tuple[str, ...]
    answer: str
    predictions: tuple[str, ...]


@dataclass(frozen=True)
class Verdict:
    """A judge's reply, read: `pred` is "yes"/"no" (None when not asked or unreadable), `score` in [0, 5] or None."""

    pred: str | None
    score: float | None


def exact_match(prediction: str, answer: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(answer)


def contains_answer(prediction: str, answer: str) -> bool:
    """The normalised answer appears in the normalised prediction as whole words."""
    wanted = normalize_answer(answer).split()
    words = normalize_answer(prediction).split()
    return bool(wanted) and any(words[i : i + len(wanted)] == wanted for i in range(len(words) - len(wanted) + 1))


def judge_prompt(criterion: Criterion, item: Item) -> str:
    if criterion.paired:
        (q1, q2), (p1, p2) = item.questions, item.predictions
        body = (
            f"Question 1: {q1}\nQuestion 2: {q2}\nCorrect answer: {item.answer}\n"
            f"Predicted answer to question 1: {p1}\nPredicted answer to question 2: {p2}\n\n"
        )
    else:
        body = _INPUT.format(question=item.questions[0], answer=item.answer, prediction=item.predictions[0])
    return body + criterion.reply_format


_PRED = re.compile(r"""['"]pred['"]\s*:\s*['"](yes|no)['"]""", re.IGNORECASE)
_SCORE = re.compile(r"""['"]score['"]\s*:\s*['"]?(\d+(?:\.\d+)?)""")


def parse_verdict(reply: str) -> Verdict:
    """Read `{'pred': 'yes', 'score': 4}` (either key may be missing) without evaluating code.

    A literal dictionary is parsed as such; otherwise the two keys are searched for. A score
    outside [0, 5] is unreadable.
    """
    text = reply.strip().removesuffix(".")
    pred = score = None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        value = None
    if isinstance(value, dict):
        pred, score = value.get("pred"), value.get("score")
    else:
        pred_match, score_match = _PRED.search(text), _SCORE.search(text)
        pred = pred_match.group(1) if pred_match else None
        score = score_match.group(1) if score_match else None
    pred = pred.strip().lower() if isinstance(pred, str) and pred.strip().lower() in ("yes", "no") else None
    try:
        score = float(score) if score is not None and not isinstance(score, bool) else None
    except (TypeError, ValueError):
        score = None
    return Verdict(pred, score if score is not None and 0.0 <= score <= MAX_SCORE else None)


def load_items(
    question_file: str | Path,
    answers_file: str | Path,
    question_file_2: str | Path | None = None,
    answers_file_2: str | Path | None = None,
) -> list[Item]:
    """The questions of the sheet (of both sheets, paired by id, for consistency) with their predictions."""
    first = _sheet(question_file, answers_file)
    if question_file_2 is None or answers_file_2 is None:
        return [Item(qid, (q,), answer, (p,) if p is not None else ()) for qid, (q, answer, p) in first.items()]
    second = _sheet(question_file_2, answers_file_2)
    if set(first) != set(second):
        only = sorted(set(first).symmetric_difference(second))
        raise ScoringError(
            f"{question_file} and {question_file_2} do not pair up: {len(only)} question ids are in one only "
            f"(e.g. {only[0]!r})"
        )
    items = []
    for qid, (q1, answer, p1) in first.items():
        q2, _, p2 = second[qid]
        predictions = (p1, p2) if p1 is not None and p2 is not None else ()
        items.append(Item(qid, (q1, q2), answer, predictions))
    return items


def _sheet(question_file: str | Path, answers_file: str | Path) -> dict[str, tuple[str, str, str | None]]:
    """question id → (question, answer, prediction or None)."""
    questions = read_questions(question_file, with_answers=True)
    answers = read_answers_by_id(answers_file, {q.question_id for q in questions}, str(question_file))
    return {
        q.question_id: (
            q.question,
            q.answer or "",
            reply_text(answers[q.question_id].text) if q.question_id in answers else None,
        )
        for q in questions
    }


def judge_items(
    items: Sequence[Item],
    criterion_name: str,
    judge: Judge | None,
    reviews: str | Path | None = None,
    judge_model: str | None = None,
) -> dict[str, str]:
    """The judge's reply per answered question: from `reviews` when it holds one for the same prompt, else asked
    (and appended to `reviews`)."""
    criterion = CRITERIA[criterion_name]
    cached = _cached_reviews(reviews, criterion_name, judge_model) if reviews else {}
    prompts = {item.question_id: judge_prompt(criterion, item) for item in items if item.predictions}
    replies = {qid: cached[qid][1] for qid, prompt in prompts.items() if cached.get(qid, ("",))[0] == prompt}
    todo = [qid for qid in prompts if qid not in replies]
    if todo and judge is None:
        raise ScoringError(f"{len(todo)} answers have no review yet; pass --judge-model to judge them")
    out = None
    if reviews and todo:
        Path(reviews).parent.mkdir(parents=True, exist_ok=True)
        out = open(reviews, "a", encoding="utf-8")
    try:
        for qid in todo:
            replies[qid] = judge(prompts[qid])
            if out is not None:
                line = {"question_id": qid, "criterion": criterion_name, "judge_model": judge_model}
                out.write(json.dumps({**line, "prompt": prompts[qid], "reply": replies[qid]}) + "\n")
                out.flush()
    finally:
        if out is not None:
            out.close()
    return replies


def _cached_reviews(path: str | Path, criterion: str, judge_model: str | None) -> dict[str, tuple[str, str]]:
    """question id → (prompt, reply) of a reviews file; a later line for the same question wins."""
    if not Path(path).exists():
        return {}
    reviews = {}
    for number, row in read_jsonl(path):
        if row.get("criterion") != criterion or not {"question_id", "prompt", "reply"} <= set(row):
            raise ScoringError(f"{path}:{number}: not a {criterion!r} review; use another --reviews file")
        if judge_model is not None and row.get("judge_model") != judge_model:
            raise ScoringError(
                f"{path}:{number}: judged by {row.get('judge_model')!r}, but this run asks {judge_model!r}; "
                "use another --reviews file"
            )
        reviews[str(row["question_id"])] = (row["prompt"], row["reply"])
    return reviews


def summarize(items: Sequence[Item], criterion_name: str, replies: dict[str, str] | None) -> dict[str, Any]:
    """Exact match and contains always; the judge's accuracy and mean score when there are replies."""
    answered = [item for item in items if item.predictions]
    match = {i.question_id: bool(i.predictions) and all(exact_match(p, i.answer) for p in i.predictions) for i in items}
    results: dict[str, Any] = {
        "criterion": criterion_name,
        "num_questions": len(items),
        "num_missing": len(items) - len(answered),
        "exact_match": percent(sum(match.values()), len(items)),
        "contains": percent(
            sum(all(contains_answer(p, i.answer) for p in i.predictions) for i in answered), len(items)
        ),
    }
    if CRITERIA[criterion_name].paired:
        agree = sum(normalize_answer(i.predictions[0]) == normalize_answer(i.predictions[1]) for i in answered)
        results["agreement"] = percent(agree, len(items))
    if replies is None:
        return {**results, "metric": "exact_match", "score": results["exact_match"], "per_sample": match}
    verdicts = {qid: parse_verdict(reply) for qid, reply in replies.items()}
    scores = [v.score for v in verdicts.values() if v.score is not None]
    results["num_unreadable"] = sum(
        v.score is None or (CRITERIA[criterion_name].yes_no and v.pred is None) for v in verdicts.values()
    )
    results["mean_score"] = mean(scores)
    if CRITERIA[criterion_name].yes_no:
        judged_yes = {i.question_id: verdicts.get(i.question_id, Verdict(None, None)).pred == "yes" for i in items}
        results["accuracy"] = percent(sum(judged_yes.values()), len(items))
        return {**results, "metric": "gpt_accuracy", "score": results["accuracy"], "per_sample": judged_yes}
    soft = {
        i.question_id: (verdicts[i.question_id].score or 0.0) / MAX_SCORE if i.question_id in verdicts else 0.0
        for i in items
    }
    return {**results, "metric": "gpt_score", "score": results["mean_score"], "per_sample": soft}


def _lazy_openai_judge(model: str, instruction: str) -> Judge:
    """An OpenAI judge built on its first question, so scoring from cached reviews needs no API key."""
    built: list[Judge] = []

    def judge(prompt: str) -> str:
        if not built:
            built.append(openai_judge(model, temperature=0.0, system_prompt=instruction))
        return built[0](prompt)

    return judge


def evaluate(
    args: argparse.Namespace, judge_factory: Callable[[str, str], Judge] = _lazy_openai_judge
) -> dict[str, Any]:
    items = load_items(args.question_file, args.answers, args.question_file_2, args.answers_2)
    replies = None
    if args.judge_model:
        judge = judge_factory(args.judge_model, CRITERIA[args.criterion].instruction)
        replies = judge_items(items, args.criterion, judge, args.reviews, args.judge_model)
    missing = sum(not item.predictions for item in items)
    if missing:
        logger.warning("%d of %d questions have no answer; counted wrong", missing, len(items))
    return {"benchmark": Path(args.question_file).stem, **summarize(items, args.criterion, replies)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--question-file", "--question_file", dest="question_file", required=True, help="IG-VLM sheet")
    parser.add_argument("--answers", required=True)
    parser.add_argument("--criterion", choices=sorted(CRITERIA), default="match")
    parser.add_argument("--question-file-2", dest="question_file_2", help="consistency: the second sheet")
    parser.add_argument("--answers-2", dest="answers_2", help="consistency: the answers to the second sheet")
    parser.add_argument("--judge-model", help="OpenAI model for the judge, e.g. gpt-3.5-turbo (off by default)")
    parser.add_argument("--reviews", help="cache of the judge's replies (JSONL); needs --judge-model")
    add_output_arguments(parser, "{question_id: correct or score/5}")
    args = parser.parse_args(argv)
    if CRITERIA[args.criterion].paired != (args.question_file_2 is not None and args.answers_2 is not None):
        parser.error("--criterion consistency, and only it, needs --question-file-2 and --answers-2")
    if args.reviews and not args.judge_model:
        parser.error("--reviews needs --judge-model")

    results = evaluate(args)
    per_sample = results.pop("per_sample")
    shown = ("score", "exact_match", "contains", "accuracy", "mean_score", "agreement")
    print_metrics(
        f"{results['benchmark']} ({args.criterion}) {args.answers}", {k: results[k] for k in shown if k in results}
    )
    write_outputs(results, per_sample, args.output, args.per_sample)
    return results


if __name__ == "__main__":
    run_cli(main)
