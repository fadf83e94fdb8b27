"""`llava.eval.run_llava`: the command line and the `eval_model(args)` call of LLaVA's README."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from llava.eval.run_llava import eval_model, main


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i, colour in enumerate(["red", "blue"]):
        path = folder / f"img{i}.png"
        Image.new("RGB", (64, 40 + 20 * i), colour).save(path)
        paths.append(path)
    return paths


def test_command_line_answers_at_a_chosen_scale(tiny_llava_pad, images, capsys):
    args = ["--model-path", str(tiny_llava_pad), "--image-file", str(images[0]), "--query", "What is this?"]
    args += ["--temperature", "0", "--max_new_tokens", "4", "--device", "cpu", "--matryoshka_vis_token_scale", "36"]
    answer = main(args)
    assert answer == capsys.readouterr().out.strip()
    assert isinstance(answer, str)


def test_llava_readme_style_args_object_with_several_images(tiny_llava_pad, images):
    args = type(
        "Args",
        (),
        {
            "model_path": str(tiny_llava_pad),
            "model_base": None,
            "model_name": "llava-v1.5-tiny-m3",
            "query": "Compare the images.",
            "conv_mode": None,
            "image_file": f"{images[0]},{images[1]}",
            "sep": ",",
            "temperature": 0,
            "top_p": None,
            "num_beams": 1,
            "max_new_tokens": 3,
            "matryoshka_vis_token_scale": 9,
            "device": "cpu",
        },
    )()
    assert isinstance(eval_model(args), str)


def test_anyres_checkpoint_answers(tiny_llava_anyres, images):
    answer = main(
        ["--model-path", str(tiny_llava_anyres), "--image-file", str(images[1]), "--query", "Describe the picture."]
        + ["--temperature", "0", "--max_new_tokens", "3", "--device", "cpu", "--matryoshka_vis_token_scale", "9"]
    )
    assert isinstance(answer, str)


def test_unreadable_image_names_the_file(tiny_llava_pad, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match=r"cannot read image .*broken\.png"):
        main(["--model-path", str(tiny_llava_pad), "--image-file", str(broken), "--query", "Hi", "--device", "cpu"])


def test_more_placeholders_than_images_is_an_error(tiny_llava_pad, images):
    with pytest.raises(ValueError, match=r"2 <image> placeholder\(s\) .* but only 1 image"):
        main(
            ["--model-path", str(tiny_llava_pad), "--image-file", str(images[0]), "--device", "cpu"]
            + ["--query", "<image-placeholder> and <image-placeholder>?", "--max_new_tokens", "2"]
        )


def test_invalid_scale_is_an_error(tiny_llava_pad, images):
    with pytest.raises(ValueError, match="valid values"):
        main(
            ["--model-path", str(tiny_llava_pad), "--image-file", str(images[0]), "--query", "Hi", "--device", "cpu"]
            + ["--matryoshka_vis_token_scale", "100"]
        )


SHAPES_MODEL = Path(__file__).resolve().parents[1] / "playground" / "shapes-m3-tiny"


@pytest.mark.skipif(not (SHAPES_MODEL / "matryoshka_policy.json").exists(), reason="no shipped checkpoint policy")
def test_auto_on_the_shipped_model_answers_as_the_budget_it_reports(tmp_path, capsys):
    from llava.data import shapes
    from llava.eval.scoring.shapes import question_text

    records = shapes.generate_split(tmp_path, "test", 2, shapes.DEFAULT_SEEDS["test"])
    for record in records[:6]:
        base = ["--model-path", str(SHAPES_MODEL), "--image-file", str(tmp_path / record["image"])]
        base += ["--query", question_text(record), "--temperature", "0", "--max_new_tokens", "3", "--device", "cpu"]
        answer = main(base + ["--matryoshka_vis_token_scale", "auto"])
        report = capsys.readouterr().err.strip().splitlines()[-1]
        assert report.startswith("[auto: answered at matryoshka_vis_token_scale=")
        scale = int(report.split("=")[1].split(",")[0])
        assert main(base + ["--matryoshka_vis_token_scale", str(scale)]) == answer


def test_llava_style_args_object_may_say_auto(tiny_llava_pad, images, capsys):
    args = type(
        "Args",
        (),
        {
            "model_path": str(tiny_llava_pad),
            "query": "What is this?",
            "image_file": str(images[0]),
            "temperature": 0,
            "max_new_tokens": 3,
            "matryoshka_vis_token_scale": "auto",
            "device": "cpu",
        },
    )()
    answer = eval_model(args)
    captured = capsys.readouterr()
    assert captured.out.strip() == answer
    assert "[auto: answered at matryoshka_vis_token_scale=576, 576 visual tokens; tried 1 (p_first" in captured.err
