"""Give LLaVA's TextVQA question file TextVQA's own question ids: `python -m llava.eval.prepare_textvqa`.

    python -m llava.eval.prepare_textvqa --question-file llava_textvqa_val_v051_ocr.jsonl \\
        --annotation-file TextVQA_0.5.1_val.json --output llava_textvqa_val_v051_ocr_qid.jsonl

LLaVA's `llava_textvqa_val_v051_ocr.jsonl` uses the image id as `question_id` (shared by all the
questions of an image), and LLaVA's scorer matched answers to annotations on (image id, question
text). `llava.eval.scoring.textvqa` matches on TextVQA's question ids instead, so this writes the
question file with them: each line's question is read from its text as LLaVA's `prompt_processor`
does, looked up with its image id among the annotations, and given that annotation's
`question_id`; every other field is kept. Run it once before `scripts/v1_5/eval/textvqa.sh`.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from llava.eval.harness import HarnessError, require
from llava.eval.scoring.common import read_json, read_jsonl, run_cli

_OCR_FIRST = re.compile(r"Question: (.*?) Short answer:", re.DOTALL)


def question_from_prompt(text: str) -> str | None:
    """The question inside a LLaVA TextVQA prompt, lowercased (LLaVA's `prompt_processor`)."""
    lines = text.split("\n")
    if text.startswith("OCR tokens: "):
        match = _OCR_FIRST.search(text)
        return match.group(1).lower() if match else None
    if "Reference OCR token: " in text and len(lines) == 3:
        return (lines[1] if text.startswith("Reference OCR token:") else lines[0]).lower()
    if len(lines) == 2:
        return lines[0].lower()
    return None


def with_textvqa_ids(question_file: str | Path, annotation_file: str | Path) -> list[dict[str, Any]]:
    data = read_json(annotation_file)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise HarnessError(f"{annotation_file}: expected a TextVQA annotation file {{'data': [...]}}")
    ids = {(str(a["image_id"]), a["question"].lower()): a["question_id"] for a in data["data"]}
    questions = []
    for number, record in read_jsonl(question_file, HarnessError):
        source = f"{question_file}:{number}"
        require(record, ("question_id", "text"), source)
        question = question_from_prompt(record["text"])
        if question is None:
            raise HarnessError(f"{source}: cannot find the question in the prompt {record['text'][:80]!r}")
        key = (str(record["question_id"]), question)
        if key not in ids:
            raise HarnessError(f"{source}: image {key[0]!r} question {question!r} is not in {annotation_file}")
        questions.append({**record, "question_id": ids[key]})
    return questions


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--question-file", required=True, help="LLaVA's llava_textvqa_val_v051_ocr.jsonl")
    parser.add_argument("--annotation-file", required=True, help="TextVQA_0.5.1_val.json")
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    questions = with_textvqa_ids(args.question_file, args.annotation_file)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in questions), encoding="utf-8")
    print(f"wrote {len(questions)} questions with TextVQA question ids to {output}")
    return output


if __name__ == "__main__":
    run_cli(main)
