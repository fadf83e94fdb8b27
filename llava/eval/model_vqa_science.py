"""Answer ScienceQA in LLaVA's format: `python -m llava.eval.model_vqa_science`.

    python -m llava.eval.model_vqa_science --model-path P --question-file llava_test_CQM-A.json \\
        --image-folder scienceqa/images/test --answers-file answers.jsonl --single-pred-prompt \\
        --temperature 0 [--matryoshka_vis_token_scale 1,9,36,144,576]

The question file is LLaVA's ScienceQA JSON: a list of `{"id", "image"?, "conversations":
[{"from": "human", "value": "<image>\\nContext: ...\\nQuestion ...\\nOptions: (A) ..."}, ...]}`; `id`
is the ScienceQA pid the scorer matches. Problems without an image are asked as text only.
`--single-pred-prompt` adds "Answer with the option's letter from the given choices directly.";
`--answer-prompter` (LLaVA's chain-of-thought variant) asks a second time after the model's
reasoning ("... ###\\nANSWER:") and answers "<reasoning>\\n The answer is <answer>".
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.eval.harness import HarnessError, Query, Sample, build_parser, parse_args, run
from llava.eval.scoring.common import run_cli

SINGLE_PRED_PROMPT = "Answer with the option's letter from the given choices directly."
ANSWER_PROMPTER = " ###\nANSWER:"


def read_samples(
    question_file: str, image_folder: str, single_pred_prompt: bool, answer_prompter: bool = False
) -> list[Sample]:
    try:
        with open(question_file, encoding="utf-8") as f:
            problems = json.load(f)
    except FileNotFoundError:
        raise HarnessError(f"{question_file}: question file not found") from None
    except json.JSONDecodeError as e:
        raise HarnessError(f"{question_file}: invalid JSON at line {e.lineno}: {e.msg}") from None
    if not isinstance(problems, list):
        raise HarnessError(
            f"{question_file}: expected LLaVA's ScienceQA list of problems, got {type(problems).__name__}"
        )
    samples = []
    for i, problem in enumerate(problems):
        source = f"{question_file}[{i}]"
        try:
            pid, question = problem["id"], problem["conversations"][0]["value"]
        except (KeyError, IndexError, TypeError):
            raise HarnessError(f"{source}: a problem needs 'id' and 'conversations'[0]['value']") from None
        text = question.replace(DEFAULT_IMAGE_TOKEN, "").strip()
        prompt = text
        image = None
        if problem.get("image"):
            image = os.path.join(image_folder, problem["image"])
            prompt = DEFAULT_IMAGE_TOKEN + "\n" + prompt
        if single_pred_prompt:
            text += "\n" + SINGLE_PRED_PROMPT
            prompt += "\n" + SINGLE_PRED_PROMPT
        query = Query(pid, text, {"prompt": prompt}, followup=ANSWER_PROMPTER if answer_prompter else None)
        samples.append(Sample(f"{source} (id {pid})", [query], image_file=image))
    return samples


def main(argv: list[str] | None = None) -> dict[int, Path]:
    parser = build_parser(__doc__.split("\n")[0], max_new_tokens=1024)
    parser.add_argument("--single-pred-prompt", "--single_pred_prompt", dest="single_pred_prompt", action="store_true")
    parser.add_argument("--answer-prompter", "--answer_prompter", dest="answer_prompter", action="store_true")
    args = parse_args(parser, argv)
    samples = read_samples(args.question_file, args.image_folder, args.single_pred_prompt, args.answer_prompter)
    return run(args, samples)


if __name__ == "__main__":
    run_cli(main)
