"""Answer IG-VLM's video benchmarks at every budget: `python -m llava.eval.model_video_qa`.

    python -m llava.eval.model_video_qa --model-path mucai/llava-next-vicuna-7b-m3 --task multiple-choice \\
        --question-file IG-VLM/data/multiple_choice_qa/NExT_QA.csv --path_video '/data/NExTVideo/%s.mp4' \\
        --answers-file answers.jsonl --matryoshka_vis_token_scale 576,144,36,9,1

Each video becomes IG-VLM's image grid (`llava.video.video_to_grid`: 6 frames, 2 per row; the `ts`
window of the row when the sheet has one) and the question is asked about the grid with IG-VLM's
prompt for the task and model size (`--llm-size 7b|13b|34b`; 7b is the prompt of the M3 release's
`llava-next-vicuna-7b-m3` run). The prompt is used as is, not laid out by a conversation template;
the template (`--conv-mode`, default the checkpoint's) only gives the stop string.

- `--task multiple-choice`: NExT-QA, IntentQA, EgoSchema, TVQA (options a0..a4) and STAR (a0..a3,
  with IG-VLM's STAR prompts); score with `llava.eval.scoring.video_choice`.
- `--task open-ended`: MSVD-QA, MSRVTT-QA, ActivityNet-QA, TGIF-FrameQA and the text-generation
  benchmark's sheets; score with `llava.eval.scoring.video_open_ended`.

Questions about the same video (and window) share one grid: it is decoded once and goes through the
vision tower once for all its questions and all budgets. `--path_video` is IG-VLM's: a path with
`%s` where the sheet's `video_name` goes; a missing file is also looked for, as IG-VLM does, without
the ActivityNet `v_` prefix and with the extensions avi, mp4, mkv, webm and gif. Chunks, batches,
resume and the per-budget answers files are the harness's (`llava.eval.harness`); the grids are made
in the DataLoader's workers (`--num-workers`, 4 by default), and decoding follows IG-VLM (greedy, up
to 512 new tokens) unless flags say otherwise.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from llava.eval.harness import HarnessError, Query, Sample, build_parser, get_chunk, parse_args, run
from llava.eval.scoring.common import run_cli
from llava.eval.scoring.video_common import VideoQuestion, read_questions
from llava.video import DEFAULT_NUM_FRAMES, VideoError, add_num_frames_argument, video_to_grid

TASKS = ("multiple-choice", "open-ended")
LLM_SIZES = ("7b", "13b", "34b")
VIDEO_EXTENSIONS = ("avi", "mp4", "mkv", "webm", "gif")
MAX_NEW_TOKENS = 512

# IG-VLM's prompts, verbatim: the benchmark numbers to compare against were measured with them.
_FIVE_OPTIONS = {
    "7b": "Select correct option to answer the question. USER: <image>\nThe provided image arranges keyframes "
    "from a video in a grid view. Question: %s A:%s. B:%s. C:%s. D:%s. E:%s. \nSelect the correct answer from "
    "the options. \nASSISTANT:\nAnswer:",
    "13b": "USER: <image>\nThe provided image arranges keyframes from a video in a grid view. Question: %s?\n "
    "A:%s. B:%s. C:%s. D:%s. E:%s. \n Select the correct answer from the options(A,B,C,D,E). \nASSISTANT: "
    "\nAnswer:",
    "34b": "<|im_start|>system\n Select correct option to answer the question.<|im_end|>\n<|im_start|>user\n "
    "<image>\n Question: %s? A:%s. B:%s. C:%s. D:%s. E: %s. Select the correct answer from the options. "
    "<|im_end|>\n<|im_start|>assistant\nAnswer:",
}
_FOUR_OPTIONS = {  # STAR
    "7b": "Select correct option to answer the question. USER: <image>\nThe provided image arranges keyframes "
    "from a video in a grid view. Question: %s A:%s. B:%s. C:%s. D:%s. \nSelect the correct answer from the "
    "options. \nASSISTANT:\nAnswer:",
    "13b": "USER: <image>\nThe provided image arranges keyframes from a video in a grid view. Question: %s?\n "
    "A:%s. B:%s. C:%s. D:%s. \n Select the correct answer from the options(A,B,C,D). \nASSISTANT: \nAnswer:",
    "34b": "<|im_start|>system\n Select correct option to answer the question.<|im_end|>\n<|im_start|>user\n "
    "<image>\n Question: %s? A:%s. B:%s. C:%s. D:%s. Select the correct answer from the options. "
    "<|im_end|>\n<|im_start|>assistant\nAnswer:",
}
_OPEN_ENDED_VICUNA = (
    "USER: <image>\nThe provided image arranges keyframes from a video in a grid view. Answer concisely with "
    "overall content and context of the video, highlighting any significant events, characters, or objects that "
    "appear throughout the frames. Question: %s? \nASSISTANT:\nAnswer: In the video,"
)
_OPEN_ENDED = {
    "7b": _OPEN_ENDED_VICUNA,
    "13b": _OPEN_ENDED_VICUNA,
    "34b": "<|im_start|>system\n Answer the question. <|im_end|>\n<|im_start|>user\n <image>\nThe provided image "
    "arranges keyframes from a video in a grid view. Answer concisely with overall content and context of the "
    "video, highlighting any significant events, characters, or objects that appear throughout the frames. "
    "Question: %s? <|im_end|>\n<|im_start|>assistant\nAnswer: In the video,",
}
MULTIPLE_CHOICE_PROMPTS = {5: _FIVE_OPTIONS, 4: _FOUR_OPTIONS}
"""Number of options → model size → prompt (question, then the options, in `%s` order)."""


def build_prompt(question: VideoQuestion, task: str, llm_size: str) -> str:
    """IG-VLM's full prompt for a question (the `<image>` marker stands where the grid goes)."""
    if task == "open-ended":
        return _OPEN_ENDED[llm_size] % question.question
    prompts = MULTIPLE_CHOICE_PROMPTS.get(len(question.options))
    if prompts is None:
        raise HarnessError(
            f"{question.source}: {len(question.options)} options; IG-VLM's prompts take 5 (a0..a4) or 4 (a0..a3, STAR)"
        )
    return prompts[llm_size] % (question.question, *question.options)


@dataclass(frozen=True)
class VideoSample(Sample):
    """A sample whose image is the IG-VLM grid of a video (made when the DataLoader asks for it)."""

    video_file: str = ""
    ts: str | None = None
    num_frames: int = DEFAULT_NUM_FRAMES

    def load_image(self) -> Image.Image:
        try:
            return video_to_grid(self.video_file, self.num_frames, self.ts)
        except VideoError as e:
            raise HarnessError(f"{self.source}: {e}") from None


def find_video(path_format: str, video_name: str) -> str:
    """IG-VLM's video path: `path_format` with `video_name` for its `%s`, or the first existing variant (no `/v_`,
    other extensions)."""
    path = path_format.replace("%s", video_name)
    if os.path.exists(path):
        return path
    if os.path.exists(path.replace("/v_", "/")):
        path = path.replace("/v_", "/")
    stem = os.path.splitext(path)[0]
    for extension in VIDEO_EXTENSIONS:
        if os.path.exists(f"{stem}.{extension}"):
            return f"{stem}.{extension}"
    return path


def read_samples(
    question_file: str, path_video: str, task: str, llm_size: str, num_frames: int = DEFAULT_NUM_FRAMES
) -> list[VideoSample]:
    """One sample per video and window, with the queries of all its questions in sheet order."""
    questions = read_questions(question_file, multiple_choice=task == "multiple-choice")
    grouped: dict[tuple[str, str | None], list[VideoQuestion]] = {}
    for question in questions:
        grouped.setdefault((find_video(path_video, question.video_name), question.ts), []).append(question)
    samples = []
    for (video, ts), group in grouped.items():
        queries = [
            Query(
                q.question_id, build_prompt(q, task, llm_size), {"prompt": q.question, "video": q.video_name}, raw=True
            )
            for q in group
        ]
        samples.append(VideoSample(group[0].source, queries, video_file=video, ts=ts, num_frames=num_frames))
    return samples


def check_videos(samples: list[VideoSample]) -> None:
    """Fail before the model loads (minutes for a 7B one) when videos are missing."""
    missing = [s for s in samples if not os.path.isfile(s.video_file)]
    if missing:
        first = missing[0]
        raise HarnessError(f"{first.source}: video file not found: {first.video_file} ({len(missing)} missing)")


def answer(args: argparse.Namespace) -> dict[int, Path]:
    samples = read_samples(args.question_file, args.path_video, args.task, args.llm_size, args.num_frames)
    check_videos(get_chunk(samples, args.num_chunks, args.chunk_idx))
    return run(args, samples)


def _path_format(value: str) -> str:
    if value.count("%s") != 1:
        raise argparse.ArgumentTypeError(
            f"must contain %s once, where the video name goes (e.g. /data/%s.mp4): {value}"
        )
    return value


def main(argv: list[str] | None = None) -> dict[int, Path]:
    parser = build_parser(__doc__.split("\n")[0], max_new_tokens=MAX_NEW_TOKENS, num_workers=4)
    parser.add_argument("--task", choices=TASKS, required=True)
    parser.add_argument(
        "--path-video",
        "--path_video",
        dest="path_video",
        type=_path_format,
        required=True,
        help="video path with %%s for the sheet's video_name, e.g. /data/msvd/%%s.avi (IG-VLM's flag)",
    )
    parser.add_argument(
        "--llm-size",
        "--llm_size",
        dest="llm_size",
        choices=LLM_SIZES,
        default="7b",
        help="which of IG-VLM's prompts (7b: the M3 release's LLaVA-NeXT-7B run)",
    )
    add_num_frames_argument(parser)
    parser.set_defaults(temperature=0.0)
    return answer(parse_args(parser, argv))


if __name__ == "__main__":
    run_cli(main)
