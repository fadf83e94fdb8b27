"""Answer LLaVA's JSONL questions (LLaVA-Bench, MM-Vet, ...): `python -m llava.eval.model_vqa`.

    python -m llava.eval.model_vqa --model-path P --question-file questions.jsonl --image-folder images \\
        --answers-file answers.jsonl [--matryoshka_vis_token_scale 1,9,36,144,576] [--temperature 0]

A question line is `{"question_id", "image", "text", ...}` (`image` relative to `--image-folder`;
a line without `image` is asked without one). The answer's `prompt` is the question text. Chunking,
batching, resume and the per-scale answers files are the harness's (`llava.eval.harness`); this
module only reads the questions. Defaults follow LLaVA's long-answer runs (up to 1024 new tokens);
`llava.eval.model_vqa_loader` is the same with the short-answer defaults.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from llava.eval.harness import HarnessError, Query, Sample, build_parser, parse_args, require, run
from llava.eval.scoring.common import read_jsonl, run_cli


def read_samples(question_file: str, image_folder: str) -> list[Sample]:
    """One sample per question line: its image and its one query."""
    samples = []
    for number, q in read_jsonl(question_file, HarnessError):
        source = f"{question_file}:{number}"
        require(q, ("question_id", "text"), source)
        image = os.path.join(image_folder, q["image"]) if q.get("image") else None
        query = Query(q["question_id"], q["text"], {"prompt": q["text"]})
        samples.append(Sample(source, [query], image_file=image))
    return samples


def answer(args: argparse.Namespace) -> dict[int, Path]:
    return run(args, read_samples(args.question_file, args.image_folder))


def main(argv: list[str] | None = None) -> dict[int, Path]:
    parser = build_parser(__doc__.split("\n")[0], max_new_tokens=1024)
    return answer(parse_args(parser, argv))


if __name__ == "__main__":
    run_cli(main)
