"""Seconds per video to decode 6 frames and build IG-VLM's grid, beside the model's time on that grid at each budget.

Writes a test clip (moving M3-Shapes scenes, `llava.testing.write_test_video`: H.264, a keyframe every
`--keyframe-interval` frames) of a benchmark-like size and length, times `llava.video.video_to_grid`
on it, then times a random model of a preset shape (llava.testing.PRESETS) answering about the grid:
the grid's preprocessing (`process_images`), the time to the first token (vision tower, projector,
M3 pooling, prefill) and a `--new-tokens` answer, at each budget.

    python benchmarks/bench_video.py --preset small --out bench_video.json
    python benchmarks/bench_video.py --preset 7b --device cuda --dtype float16

Prints a markdown table; writes JSON with every measurement. Times are the fastest of `--repeats`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from bench_inference import environment, timed
from PIL import Image

from llava.constants import IMAGE_TOKEN_INDEX
from llava.mm_utils import process_images
from llava.testing import PRESETS, build_random_llava, tiny_image_processor, write_test_video
from llava.video import DEFAULT_NUM_FRAMES, sample_frames, video_to_grid

PROMPT_TOKENS = 96
"""Text tokens around the grid: a multiple-choice question with five options, as IG-VLM asks it."""


def bench_decoding(args: argparse.Namespace, folder: Path) -> tuple[dict[str, Any], Image.Image]:
    width, height = args.size
    frames = round(args.seconds * args.fps)
    path = write_test_video(
        folder / "clip.mp4", frames, fps=args.fps, size=(width, height), keyframe_interval=args.keyframe_interval
    )
    grid = video_to_grid(path, args.num_frames)
    return {
        "video": {"width": width, "height": height, "fps": args.fps, "frames": frames, "codec": "h264"},
        "keyframe_interval": args.keyframe_interval,
        "num_frames": args.num_frames,
        "grid_size": list(grid.size),
        "decode_s": timed(lambda: sample_frames(path, args.num_frames), "cpu", args.repeats),
        "decode_and_grid_s": timed(lambda: video_to_grid(path, args.num_frames), "cpu", args.repeats),
        "bytes": path.stat().st_size,
    }, grid


def bench_model(args: argparse.Namespace, grid: Image.Image) -> list[dict[str, Any]]:
    model = build_random_llava(args.preset, args.aspect, args.device, args.dtype)
    processor = tiny_image_processor(PRESETS[args.preset][0]["image_size"])
    generator = torch.Generator().manual_seed(0)
    text = torch.randint(10, 500, (PROMPT_TOKENS,), generator=generator).tolist()
    ids = torch.tensor([text[:8] + [IMAGE_TOKEN_INDEX] + text[8:]], device=args.device)

    def pixels() -> torch.Tensor:
        return process_images([grid], processor, model.config).to(args.device, args.dtype)

    images = pixels()

    def generate(scale: int, new_tokens: int) -> Any:
        with torch.inference_mode():
            return model.generate(
                ids,
                images=images,
                image_sizes=[grid.size],
                matryoshka_vis_token_scale=scale,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=0,
            )

    preprocess = timed(pixels, "cpu", args.repeats)
    rows = []
    for scale in args.scales:
        rows.append(
            {
                "scale": scale,
                "visual_tokens": model.num_visual_tokens(scale, grid.size),
                "preprocess_s": preprocess,
                "ttft_s": timed(lambda: generate(scale, 1), args.device, args.repeats),
                "answer_s": timed(lambda: generate(scale, args.new_tokens), args.device, args.repeats),
            }
        )
    return rows


def markdown(results: dict[str, Any]) -> str:
    decoding = results["decoding"]
    video = decoding["video"]
    lines = [
        f"video: {video['width']}x{video['height']}, {video['frames']} frames at {video['fps']} fps (H.264, a keyframe "
        f"every {decoding['keyframe_interval']}); grid of {decoding['num_frames']} frames: "
        f"{decoding['grid_size'][0]}x{decoding['grid_size'][1]}",
        f"decode: {decoding['decode_s']:.4f} s; decode + grid: {decoding['decode_and_grid_s']:.4f} s per video",
        "",
        f"model: preset `{results['preset']}` ({results['aspect']}) on {results['device']} "
        f"({results['cuda_device'] or results['machine']}, {results['threads']} threads, {results['dtype']})",
        "",
        f"| scale | visual tokens | preprocess s | TTFT s | {results['new_tokens']}-token answer s | decode + grid share |",
        "|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        total = decoding["decode_and_grid_s"] + row["preprocess_s"] + row["answer_s"]
        lines.append(
            f"| {row['scale']} | {row['visual_tokens']} | {row['preprocess_s']:.4f} | {row['ttft_s']:.4f} "
            f"| {row['answer_s']:.4f} | {100 * decoding['decode_and_grid_s'] / total:.1f}% |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--aspect", default="anyres", choices=["pad", "anyres"], help="anyres: LLaVA-NeXT, as IG-VLM")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) / float16 / bfloat16")
    parser.add_argument("--size", default="640x360", help="frame width x height (NExT-QA's videos are 640x480)")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--keyframe-interval", type=int, default=250, help="x264's default")
    parser.add_argument("--num-frames", type=int, default=DEFAULT_NUM_FRAMES)
    parser.add_argument("--scales", default="576,9")
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    parser.add_argument("--out", default=None, help="write the JSON results here")
    args = parser.parse_args(argv)
    args.size = tuple(int(v) for v in args.size.lower().split("x"))
    args.scales = [int(s) for s in args.scales.split(",")]
    args.dtype = (
        getattr(torch, args.dtype) if args.dtype else (torch.float32 if args.device == "cpu" else torch.float16)
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        decoding, grid = bench_decoding(args, Path(folder))
    results = {
        "preset": args.preset,
        "aspect": args.aspect,
        **environment(args.device, args.dtype),
        "new_tokens": args.new_tokens,
        "decoding": decoding,
        "rows": bench_model(args, grid),
    }
    print(markdown(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
