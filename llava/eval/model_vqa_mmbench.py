"""Answer MMBench / MMBench-CN from its TSV, with every option rotation: `python -m llava.eval.model_vqa_mmbench`.

    python -m llava.eval.model_vqa_mmbench --model-path P --question-file mmbench_dev_20230712.tsv \\
        --answers-file answers.jsonl --single-pred-prompt --temperature 0 [--all-rounds] [--lang cn] \\
        [--matryoshka_vis_token_scale 1,9,36,144,576]

Each TSV row (`index, question, hint, A, B, C, D, ..., image` as base64) is one image. The prompt
is the hint (when present), the question, and the options as "A. ...", one per line, as LLaVA
writes it. With `--all-rounds` the row is asked once per option with the options rotated: round r
shows original option r first, so the scorer (`llava.eval.scoring.mmbench`) maps a letter read in
round r back to the original one. Answer lines carry `question_id` = `index`, `round_idx`, the
displayed `options` and, per displayed letter, the original letter (`option_char`). All rounds and
scales of a row share one pass of the vision tower. `--single-pred-prompt` adds "Answer with the
option's letter from the given choices directly." (`--lang cn`: "请直接回答选项字母。").
"""

from __future__ import annotations

import string
from pathlib import Path

from llava.eval.harness import HarnessError, Query, Sample, build_parser, parse_args, run
from llava.eval.scoring.common import run_cli
from llava.eval.scoring.mmbench import questions_from_table, read_tsv

SINGLE_PRED_PROMPT = {
    "en": "Answer with the option's letter from the given choices directly.",
    "cn": "请直接回答选项字母。",
}
_IMAGE_REFERENCE_MAX_LEN = 64
"""Newer MMBench TSVs store a repeated image as the `index` of the row that holds it."""


def _is_empty(value: str) -> bool:
    return value.strip() == "" or value.strip().lower() in ("nan", "none")


def rotation_queries(
    index: int, question: str, hint: str, options: list[str], rounds: int, single_pred_prompt: str | None
) -> list[Query]:
    """One query per round; round r shows the options rotated left by r."""
    if not _is_empty(hint):
        question = hint + "\n" + question
    letters = string.ascii_uppercase[: len(options)]
    queries = []
    for round_idx in range(rounds):
        shown = options[round_idx:] + options[:round_idx]
        original = letters[round_idx:] + letters[:round_idx]
        prompt = question + "".join(f"\n{letter}. {option}" for letter, option in zip(letters, shown))
        text = prompt + ("\n" + single_pred_prompt if single_pred_prompt else "")
        fields = {"round_idx": round_idx, "prompt": prompt, "options": shown, "option_char": list(original)}
        queries.append(Query(index, text, fields, round_idx=round_idx))
    return queries


def read_samples(question_file: str, all_rounds: bool, single_pred_prompt: str | None) -> list[Sample]:
    table = read_tsv(question_file)
    if "image" not in table.columns:
        raise HarnessError(f"{question_file}: no 'image' column (base64 images); columns: {list(table.columns)}")
    questions = questions_from_table(table, question_file)  # the options exactly as the scorer counts them
    rows = table.to_dict("records")
    image_of_index = {int(row["index"]): row["image"] for row in rows}
    samples = []
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        source = f"{question_file}:{line}"
        index = int(row["index"])
        image = row["image"]
        if len(image) <= _IMAGE_REFERENCE_MAX_LEN and image.strip().isdigit():
            if int(image) not in image_of_index:
                raise HarnessError(f"{source}: image refers to row index {image}, which is not in the TSV")
            image = image_of_index[int(image)]
        if _is_empty(image):
            raise HarnessError(f"{source}: index {index} has no image")
        options = questions[index].options
        rounds = len(options) if all_rounds else 1
        queries = rotation_queries(index, row["question"], row.get("hint", ""), options, rounds, single_pred_prompt)
        samples.append(Sample(source, queries, image_base64=image))
    return samples


def main(argv: list[str] | None = None) -> dict[int, Path]:
    parser = build_parser(__doc__.split("\n")[0], max_new_tokens=1024)
    parser.add_argument("--single-pred-prompt", "--single_pred_prompt", dest="single_pred_prompt", action="store_true")
    parser.add_argument("--all-rounds", "--all_rounds", dest="all_rounds", action="store_true")
    parser.add_argument("--lang", choices=sorted(SINGLE_PRED_PROMPT), default="en")
    args = parse_args(parser, argv)
    suffix = SINGLE_PRED_PROMPT[args.lang] if args.single_pred_prompt else None
    return run(args, read_samples(args.question_file, args.all_rounds, suffix))


if __name__ == "__main__":
    run_cli(main)
