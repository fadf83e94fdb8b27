"""Answer short-answer questions in batches through a DataLoader: `python -m llava.eval.model_vqa_loader`.

Used for VQAv2, GQA, VizWiz, TextVQA, POPE, MME and SEED-Bench:

    python -m llava.eval.model_vqa_loader --model-path P --question-file llava_gqa_testdev_balanced.jsonl \\
        --image-folder images --answers-file answers.jsonl --temperature 0 \\
        [--matryoshka_vis_token_scale 1,9,36,144,576] [--batch-size 8] [--num-workers 4]

The question file is LLaVA's JSONL as for `llava.eval.model_vqa`; images are read and preprocessed
by a torch DataLoader (`--num-workers`, 4 by default as in LLaVA) and `--batch-size` prompts are
answered per `generate` call (left-padded; greedy answers do not depend on the batch size).
Defaults follow LLaVA's short-answer runs: up to 128 new tokens.
"""

from __future__ import annotations

from pathlib import Path

from llava.eval.harness import build_parser, parse_args
from llava.eval.model_vqa import answer
from llava.eval.scoring.common import run_cli


def main(argv: list[str] | None = None) -> dict[int, Path]:
    parser = build_parser(__doc__.split("\n")[0], max_new_tokens=128, num_workers=4)
    return answer(parse_args(parser, argv))


if __name__ == "__main__":
    run_cli(main)
