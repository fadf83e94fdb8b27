"""`--video-file` of the terminal chat and of run_llava, with the shipped M3-Shapes model on clips written at test
time: an M3-Shapes scene on one background colour whose red square slides across."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from llava.eval import run_llava
from llava.serve import cli
from llava.testing import write_test_video
from llava.video import VideoError

SHAPES_MODEL = Path(__file__).resolve().parents[1] / "playground" / "shapes-m3-tiny"
QUESTION = "What color is the background?"

pytestmark = pytest.mark.skipif(not (SHAPES_MODEL / "model.safetensors").exists(), reason="no shipped checkpoint")


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clips")
    return {bg: write_test_video(folder / f"{bg}.mp4", 40, background=bg, counter=False) for bg in ("gray", "black")}


@pytest.mark.parametrize(("background", "scale"), [("gray", 576), ("gray", 9), ("black", 144), ("black", 1)])
def test_the_terminal_chat_answers_about_a_video(monkeypatch, capsys, clips, background: str, scale: int) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(QUESTION + "\n"))
    argv = ["--model-path", str(SHAPES_MODEL), "--video-file", str(clips[background]), "--device", "cpu"]
    cli.main([*argv, "--temperature", "0", "--matryoshka_vis_token_scale", str(scale)])
    out = capsys.readouterr().out
    assert f"matryoshka_vis_token_scale={scale}: {scale} visual tokens for this image" in out
    assert f"ASSISTANT: {background}\n" in out, out


@pytest.mark.parametrize(("background", "scale"), [("black", 576), ("gray", 36)])
def test_run_llava_answers_about_a_video(capsys, clips, background: str, scale: int) -> None:
    argv = ["--model-path", str(SHAPES_MODEL), "--video-file", str(clips[background]), "--query", QUESTION]
    answer = run_llava.main(
        [*argv, "--temperature", "0", "--device", "cpu", "--matryoshka_vis_token_scale", str(scale)]
    )
    assert answer == background == capsys.readouterr().out.strip()


def test_the_frame_count_is_a_flag(clips) -> None:
    # A 40-frame clip holds 6 frames at an interval of 6, but not 41 frames.
    argv = ["--model-path", str(SHAPES_MODEL), "--video-file", str(clips["gray"]), "--query", QUESTION]
    assert run_llava.main([*argv, "--num-frames", "4", "--temperature", "0", "--device", "cpu"]) == "gray"
    with pytest.raises(VideoError, match=r"gray\.mp4: the clip has 41 frames, fewer than the 50 frames asked for"):
        run_llava.main([*argv, "--num_frames", "50", "--device", "cpu"])


def test_a_bad_video_is_an_error_naming_the_file(tmp_path: Path, clips) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video, only text" * 10)
    base = ["--model-path", str(SHAPES_MODEL), "--device", "cpu"]
    with pytest.raises(SystemExit, match=r"error: .*broken\.mp4: not a readable video"):
        cli.main([*base, "--video-file", str(broken)])
    with pytest.raises(SystemExit, match=r"error: video file not found: .*missing\.mp4"):
        cli.main([*base, "--video-file", str(tmp_path / "missing.mp4")])
    with pytest.raises(VideoError, match=r"broken\.mp4: not a readable video"):
        run_llava.main([*base, "--video-file", str(broken), "--query", QUESTION])


def test_an_image_and_a_video_at_once_are_refused(clips, capsys) -> None:
    both = ["--model-path", str(SHAPES_MODEL), "--video-file", str(clips["gray"]), "--image-file", "x.png"]
    for parse in (cli.parse_args, run_llava.build_parser().parse_args):
        with pytest.raises(SystemExit):
            parse([*both, "--query", QUESTION] if parse is not cli.parse_args else both)
        assert "not allowed with argument" in capsys.readouterr().err
    args = run_llava.RunArgs(str(SHAPES_MODEL), QUESTION, image_file="x.png", video_file=str(clips["gray"]))
    with pytest.raises(ValueError, match="give image_file or video_file, not both"):
        run_llava.eval_model(args)
