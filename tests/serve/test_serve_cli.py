"""The terminal chat driven in-process: main([...]) with stdin replaced."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from llava.serve import cli


@pytest.fixture(scope="module")
def image_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "red.png"
    Image.new("RGB", (64, 40), (200, 30, 30)).save(path)
    return path


def chat(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, argv: list[str], stdin: object) -> str:
    monkeypatch.setattr("sys.stdin", stdin)
    cli.main(argv)
    return capsys.readouterr().out


def test_multi_turn_chat_with_a_scale_change_and_eof(monkeypatch, capsys, tiny_llava_pad: Path, image_file: Path):
    argv = [
        "--model-path",
        str(tiny_llava_pad),
        "--image-file",
        str(image_file),
        "--device",
        "cpu",
        "--matryoshka_vis_token_scale",
        "36",
        "--temperature",
        "0",
        "--max-new-tokens",
        "5",
        "--debug",
    ]
    lines = "What is in the image?\n/scale 10\n/scale lots\n/scale 9\nAnd the colour?\n\n/help\n/reset\nAgain?\n"
    out = chat(monkeypatch, capsys, argv, io.StringIO(lines))
    assert "matryoshka_vis_token_scale=36: 36 visual tokens for this image" in out
    assert "error: matryoshka_vis_token_scale=10 is not a valid" in out and "valid values" in out
    assert "error: /scale takes an integer budget or auto, e.g. /scale 9; valid values: [1, 4, 9" in out
    assert "matryoshka_vis_token_scale=9: 9 visual tokens for this image" in out
    # Each turn re-reads the whole conversation at the budget of the moment.
    prompts = [line for line in out.splitlines() if line.startswith("[prompt:")]
    assert [p.split(", ")[1] for p in prompts] == ["36 visual]", "9 visual]", "9 visual]"]
    assert out.count("ASSISTANT: ") >= 3
    assert "new conversation" in out and "commands:" in out
    assert out.rstrip().endswith("bye")


class InterruptingStdin(io.StringIO):
    """Answers one line, then behaves like a user pressing Ctrl-C at the prompt."""

    def readline(self, *args) -> str:
        line = super().readline(*args)
        if not line:
            raise KeyboardInterrupt
        return line


def test_ctrl_c_exits_cleanly(monkeypatch, capsys, tiny_llava_pad: Path):
    argv = ["--model-path", str(tiny_llava_pad), "--device", "cpu", "--max-new-tokens", "3"]
    out = chat(monkeypatch, capsys, argv, InterruptingStdin("Hello there\n"))
    assert "576 visual tokens per image" in out
    assert out.rstrip().endswith("bye")


def test_a_bad_image_or_scale_is_reported_not_raised(tiny_llava_pad: Path, tmp_path: Path):
    with pytest.raises(SystemExit, match="image file not found"):
        cli.main(["--model-path", str(tiny_llava_pad), "--device", "cpu", "--image-file", str(tmp_path / "no.png")])
    with pytest.raises(SystemExit, match="valid values"):
        cli.main(["--model-path", str(tiny_llava_pad), "--device", "cpu", "--matryoshka_vis_token_scale", "5"])


def test_cpu_weight_prepack_chats_the_same(monkeypatch, capsys, tiny_llava_pad: Path, image_file: Path):
    argv = ["--model-path", str(tiny_llava_pad), "--image-file", str(image_file), "--device", "cpu"]
    argv += ["--matryoshka_vis_token_scale", "9", "--temperature", "0", "--max-new-tokens", "8"]
    plain = chat(monkeypatch, capsys, argv, io.StringIO("What is in the image?\n"))
    packed = chat(monkeypatch, capsys, argv + ["--cpu-weight-prepack"], io.StringIO("What is in the image?\n"))
    assert "ASSISTANT: " in packed and packed == plain


def test_worker_flag_loads_a_packed_model(tiny_llava_pad: Path):
    from llava.model.cpu_packing import PackedLinear
    from llava.serve import model_worker
    from llava.serve.service import service_from_args

    args = model_worker.parse_args(["--model-path", str(tiny_llava_pad), "--device", "cpu", "--cpu-weight-prepack"])
    model = service_from_args(args).engine.model
    assert isinstance(model.lm_head, PackedLinear) and isinstance(model.model.mm_projector[0], PackedLinear)


def test_weight_packing_flag_is_auto_unless_given(tiny_llava_pad: Path):
    from llava.serve import model_worker

    base = ["--model-path", str(tiny_llava_pad), "--device", "cpu"]
    for parse in (cli.parse_args, model_worker.parse_args):
        assert parse(base).cpu_weight_prepack is None  # prepare_for_inference packs where it pays
        assert parse(base + ["--cpu-weight-prepack"]).cpu_weight_prepack is True
        assert parse(base + ["--no-cpu-weight-prepack"]).cpu_weight_prepack is False


SHAPES_MODEL = Path(__file__).resolve().parents[2] / "playground" / "shapes-m3-tiny"


@pytest.mark.skipif(not (SHAPES_MODEL / "matryoshka_policy.json").exists(), reason="no shipped checkpoint policy")
def test_auto_on_the_shipped_model_prints_the_budget_of_each_answer(monkeypatch, capsys, tmp_path: Path):
    from llava.data import shapes
    from llava.scale_policy import read_policy_file

    records = shapes.generate_split(tmp_path, "test", 1, shapes.DEFAULT_SEEDS["test"])
    image = str(tmp_path / records[0]["image"])
    argv = ["--model-path", str(SHAPES_MODEL), "--image-file", image, "--device", "cpu", "--temperature", "0"]
    argv += ["--max-new-tokens", "3", "--matryoshka_vis_token_scale", "auto"]
    lines = "What color is the background?\nIs there a small x?\n/scale 36\nIs there a small x?\n"
    out = chat(monkeypatch, capsys, argv, io.StringIO(lines))
    policy = read_policy_file(SHAPES_MODEL / "matryoshka_policy.json").policy
    assert f"matryoshka_vis_token_scale=auto: {policy.describe()}" in out
    used = [line for line in out.splitlines() if line.startswith("[auto: answered at matryoshka_vis_token_scale=")]
    assert len(used) == 2  # one per answer while auto is on, none after /scale 36
    assert all(int(line.split("=")[1].split(",")[0]) in policy.ladder for line in used)
    assert "matryoshka_vis_token_scale=36: 36 visual tokens for this image" in out


def test_scale_auto_between_turns(monkeypatch, capsys, tiny_llava_pad: Path, image_file: Path):
    argv = ["--model-path", str(tiny_llava_pad), "--image-file", str(image_file), "--device", "cpu"]
    argv += ["--temperature", "0", "--max-new-tokens", "3", "--matryoshka_vis_token_scale", "9"]
    out = chat(monkeypatch, capsys, argv, io.StringIO("/scale auto\nWhat is in the image?\n"))
    # No policy file: the uncalibrated default ladder of the trained budgets.
    assert "matryoshka_vis_token_scale=auto: 1 (>0.9) -> 9 (>0.9) -> 36 (>0.9) -> 144 (>0.9) -> 576" in out
    assert "1 to 576 visual tokens for this image" in out
    assert "[auto: answered at matryoshka_vis_token_scale=576, 576 visual tokens; 766 processed" in out
