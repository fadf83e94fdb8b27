"""The adaptive budget: the ladder walk against fixed budgets, token accounting, one tower pass, the picture."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from llava.adaptive import AdaptiveAnswer, answer_adaptive, answer_every_scale, checkpoint_policy, resolve_budget
from llava.data import shapes
from llava.eval.scoring.shapes import question_text
from llava.generation import Generator, PromptBatch, SamplingParams, add_scale_argument
from llava.mm_utils import get_model_name_from_path
from llava.model.builder import load_pretrained_model
from llava.scale_picture import GAP, scale_picture
from llava.scale_policy import AUTO, ScalePolicy, write_policy_file

SHAPES_MODEL = Path(__file__).resolve().parents[1] / "playground" / "shapes-m3-tiny"
LADDER = (1, 9, 36, 144, 576)
GREEDY = SamplingParams(temperature=0, max_new_tokens=4)
QUESTIONS = ["What is in the image?", "Describe the picture.", "how many shapes?", "What colour is it?"]
# Different aspect ratios: anyres images then cost different numbers of tokens.
SIZES = [(48, 48), (64, 40), (30, 60), (52, 44)]


def load(path: Path) -> Generator:
    name = get_model_name_from_path(str(path))
    tokenizer, model, processor, _ = load_pretrained_model(str(path), None, name, device="cpu")
    return Generator(tokenizer, model, processor, name)


@pytest.fixture(scope="module")
def pad(tiny_llava_pad: Path) -> Generator:
    return load(tiny_llava_pad)


@pytest.fixture(scope="module")
def anyres(tiny_llava_anyres: Path) -> Generator:
    return load(tiny_llava_anyres)


def images(count: int = 4) -> list[Image.Image]:
    colours = [(200, 30, 30), (20, 160, 60), (30, 40, 220), (240, 220, 20)]
    return [Image.new("RGB", SIZES[i % 4], colours[i % 4]) for i in range(count)]


def batch(generator: Generator, count: int = 4, encoded: bool = True) -> PromptBatch:
    pictures = images(count)
    ids = [generator.tokenize(generator.prompt(QUESTIONS[i % 4], 1)) for i in range(count)]
    pixels = generator.pixels(pictures)
    return PromptBatch(ids, generator.encode(pixels) if encoded else pixels, [p.size for p in pictures])


def count_tower_calls(generator: Generator) -> tuple[list[int], Any]:
    """Crops per vision-tower call, recorded by a forward hook (remove the returned handle after use)."""
    calls: list[int] = []
    handle = generator.model.get_vision_tower().register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    return calls, handle


def test_threshold_zero_answers_at_the_lowest_rung_as_the_fixed_budget_does(pad: Generator) -> None:
    prompts = batch(pad)
    answers = answer_adaptive(pad, prompts, ScalePolicy.uniform(LADDER, 0.0), GREEDY)
    assert [a.text for a in answers] == pad.answer(prompts, 1, GREEDY)
    assert all(a.rungs == [1] and a.visual_tokens == a.visual_tokens_processed == 1 for a in answers)
    assert all(len(a.p_first) == 1 and 0 < a.p_first[0] <= 1 for a in answers)


def test_threshold_one_answers_at_the_highest_rung_as_the_fixed_budget_does(pad: Generator) -> None:
    prompts = batch(pad)
    answers = answer_adaptive(pad, prompts, ScalePolicy.uniform(LADDER, 1.0), GREEDY)
    assert [a.text for a in answers] == pad.answer(prompts, 576, GREEDY)
    for answer in answers:
        assert answer.rungs == list(LADDER) and answer.scale == 576
        assert answer.visual_tokens == 576 and answer.visual_tokens_processed == sum(LADDER)
        assert answer.metadata()["visual_tokens_processed"] == 766


@pytest.fixture(scope="module")
def shapes_batch(tmp_path_factory: pytest.TempPathFactory) -> tuple[Generator, PromptBatch]:
    """The shipped M3-Shapes model and four held-out questions: a trained model's confidence differs from row
    to row (a random tiny model's p_first is about 1/vocabulary for every row)."""
    if not (SHAPES_MODEL / "model.safetensors").exists():
        pytest.skip("no shipped checkpoint")
    generator = load(SHAPES_MODEL)
    folder = tmp_path_factory.mktemp("shapes")
    records = shapes.generate_split(folder, "test", 2, shapes.DEFAULT_SEEDS["test"])[:4]
    pictures = [Image.open(folder / r["image"]).convert("RGB") for r in records]
    ids = [generator.tokenize(generator.prompt(question_text(r), 1)) for r in records]
    return generator, PromptBatch(ids, generator.encode(generator.pixels(pictures)))


def test_the_ladder_stops_at_the_first_confident_rung(
    shapes_batch: tuple[Generator, PromptBatch], monkeypatch: pytest.MonkeyPatch
) -> None:
    pad, prompts = shapes_batch
    _, fixed = answer_every_scale(pad, prompts, LADDER, GREEDY)
    # Per rung, a threshold between the two most confident rows still walking: exactly one row stops at each
    # of the rungs 1, 9, 36, and the last one goes on to 576.
    walking, thresholds, expected = [0, 1, 2, 3], [], {}
    for scale in LADDER[:-1]:
        if len(walking) == 1:
            thresholds.append(1.0)
            continue
        ranked = sorted(walking, key=lambda row: fixed[scale].p_first[row], reverse=True)
        top, second = (fixed[scale].p_first[row] for row in ranked[:2])
        # The walk's batches are padded differently from the fixed run's; p_first moves by far less than this.
        assert top - second > 1e-5, "rows too close to split reliably"
        thresholds.append((top + second) / 2)
        expected[ranked[0]] = LADDER[: LADDER.index(scale) + 1]
        walking.remove(ranked[0])
    expected[walking[0]] = LADDER
    expected = [expected[row] for row in range(4)]
    policy = ScalePolicy(LADDER, (*thresholds, 0.0))
    generate_rows: list[int] = []
    generate = pad.generate

    def counting(prompt_batch: PromptBatch, *args: Any, **kwargs: Any) -> torch.Tensor:
        generate_rows.append(len(prompt_batch.input_ids))
        return generate(prompt_batch, *args, **kwargs)

    monkeypatch.setattr(pad, "generate", counting)
    answers = answer_adaptive(pad, prompts, policy, GREEDY)
    assert [tuple(a.rungs) for a in answers] == expected
    for row, answer in enumerate(answers):
        assert answer.text == fixed[answer.scale].texts[row]
        for scale, p in zip(answer.rungs, answer.p_first):
            assert p == pytest.approx(fixed[scale].p_first[row], abs=1e-5)
    assert sorted(len(e) for e in expected) == [1, 2, 3, 5]
    # Rows not yet answered go on together: one generate call per rung, over the rows still walking.
    assert generate_rows == [4, 3, 2, 1, 1]


def test_the_tower_runs_once_per_image_whatever_the_rungs(pad: Generator) -> None:
    calls, handle = count_tower_calls(pad)
    try:
        answers = answer_adaptive(pad, batch(pad, encoded=False), ScalePolicy.uniform(LADDER, 1.0), GREEDY)
        assert calls == [4]
        calls.clear()
        answer_every_scale(pad, batch(pad, encoded=False), LADDER, GREEDY)
        assert calls == [4]
    finally:
        handle.remove()
    assert all(len(a.rungs) == 5 for a in answers)


def test_anyres_token_counts_are_what_the_splice_inserts(anyres: Generator) -> None:
    prompts = batch(anyres)
    answers = answer_adaptive(anyres, prompts, ScalePolicy((1, 9, 36), (1.0, 1.0, 0.0)), GREEDY)
    model = anyres.model
    for row, answer in enumerate(answers):
        assert answer.rungs == [1, 9, 36]
        for scale, tokens in zip(answer.rungs, answer.tokens):
            spliced = model.prepare_multimodal_inputs(
                torch.tensor([prompts.input_ids[row]]), None, None, prompts.images.select([row]), [SIZES[row]], scale
            )
            text_tokens = sum(1 for t in prompts.input_ids[row] if t >= 0)
            assert tokens == spliced.inputs_embeds.shape[1] - text_tokens
        assert answer.visual_tokens == answer.tokens[-1] and answer.visual_tokens_processed == sum(answer.tokens)
    # Images of other shapes cost other numbers of tokens: the counts are per image, not per scale.
    assert len({a.visual_tokens for a in answers}) > 1


def test_rows_without_images_answer_at_the_first_rung(pad: Generator) -> None:
    prompts = batch(pad, count=2)
    text_only = pad.tokenize(pad.prompt("Say yes or no.", 0))
    mixed = PromptBatch([prompts.input_ids[0], text_only, prompts.input_ids[1]], prompts.images, prompts.image_sizes)
    answers = answer_adaptive(pad, mixed, ScalePolicy.uniform((9, 36), 1.0), GREEDY)
    assert [a.rungs for a in answers] == [[9, 36], [9], [9, 36]]
    assert answers[1].visual_tokens_processed == 0
    assert answers[1].text == pad.answer(PromptBatch([text_only]), 9, GREEDY)[0]


def test_a_policy_the_model_cannot_run_is_refused(pad: Generator) -> None:
    with pytest.raises(ValueError, match="valid values"):
        answer_adaptive(pad, batch(pad), ScalePolicy.uniform((1, 100), 0.5), GREEDY)
    with pytest.raises(ValueError, match="num_beams=1"):
        answer_adaptive(pad, batch(pad), ScalePolicy.uniform((1, 9), 0.5), SamplingParams(temperature=0, num_beams=2))


def test_sampled_rows_walk_the_ladder_too(pad: Generator) -> None:
    torch.manual_seed(0)
    params = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=3)
    answers = answer_adaptive(pad, batch(pad), ScalePolicy.uniform((1, 9, 36), 1.0), params)
    assert all(a.rungs == [1, 9, 36] and isinstance(a.text, str) for a in answers)


def test_every_scale_from_one_encoding_matches_each_fixed_answer(pad: Generator) -> None:
    prompts = batch(pad)
    tower_seconds, by_scale = answer_every_scale(pad, prompts, (576, 9), GREEDY)
    assert tower_seconds >= 0
    for scale, result in by_scale.items():
        assert result.texts == pad.answer(prompts, scale, GREEDY)
        assert result.visual_tokens == [scale] * 4 and result.seconds > 0
        assert all(0 < p <= 1 for p in result.p_first)


# -- which policy `auto` means ----------------------------------------------------------------------------


def test_auto_reads_the_checkpoint_policy_else_the_uncalibrated_default(
    pad: Generator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert resolve_budget(36, pad.model, tmp_path) == 36
    default = resolve_budget(AUTO, pad.model, tmp_path)
    assert default.ladder == LADDER and "no calibrated scale policy" in caplog.text
    stored = ScalePolicy((1, 36), (0.7, 0.0))
    write_policy_file(tmp_path / "matryoshka_policy.json", stored, {"target": "test"})
    assert checkpoint_policy(pad.model, tmp_path) == stored
    write_policy_file(tmp_path / "matryoshka_policy.json", ScalePolicy((1, 100), (0.5, 0.0)))
    with pytest.raises(ValueError, match="matryoshka_vis_token_scale=100 is not a valid"):
        checkpoint_policy(pad.model, tmp_path)


def test_auto_is_parsed_only_where_the_edge_allows_it() -> None:
    parser = argparse.ArgumentParser()
    add_scale_argument(parser, "budget", auto=True)
    assert parser.parse_args(["--matryoshka_vis_token_scale", "auto"]).matryoshka_vis_token_scale is AUTO
    assert parser.parse_args(["--matryoshka_vis_token_scale", "36"]).matryoshka_vis_token_scale == 36
    several = argparse.ArgumentParser()
    add_scale_argument(several, "budgets", several=True, auto=True)
    assert several.parse_args(["--matryoshka_vis_token_scale", "auto,1,9"]).matryoshka_vis_token_scale == [AUTO, 1, 9]
    assert several.parse_args(["--matryoshka_vis_token_scale", "36,AUTO"]).matryoshka_vis_token_scale == [36, AUTO]
    plain = argparse.ArgumentParser()
    add_scale_argument(plain, "budget")
    for parser_, text in [(plain, "auto"), (parser, "lots"), (several, "auto,x")]:
        with pytest.raises(SystemExit):
            parser_.parse_args(["--matryoshka_vis_token_scale", text])


def test_adaptive_answer_metadata() -> None:
    answer = AdaptiveAnswer("yes", [1, 9], [0.4, 0.95], [1, 9])
    assert answer.metadata() == {
        "scale_used": 9,
        "rungs": [1, 9],
        "p_first": [0.4, 0.95],
        "visual_tokens": 9,
        "visual_tokens_processed": 10,
    }


# -- the picture of what the model sees ----------------------------------------------------------------------


def test_picture_averages_each_pooling_block(pad: Generator) -> None:
    image = Image.new("RGB", (48, 48), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 24, 48))  # left half white
    image.paste((255, 0, 0), (0, 0, 8, 8))  # a red corner, smaller than one block at 9 tokens
    full = scale_picture(pad, image, 576)
    assert full.size == (48, 48) and full.getpixel((2, 2)) == (255, 0, 0)
    nine = scale_picture(pad, image, 9)  # 3x3 blocks of 16x16 pixels
    assert nine.getpixel((0, 0)) == nine.getpixel((15, 15)) != nine.getpixel((16, 0))
    red_share = 64 / 256  # the corner is 8x8 of the block's 16x16 pixels
    assert nine.getpixel((0, 0))[1] == pytest.approx(255 * (1 - red_share), abs=2)
    one = scale_picture(pad, image, 1)
    assert len(one.getcolors()) == 1
    with pytest.raises(ValueError, match="valid values"):
        scale_picture(pad, image, 10)


def test_picture_pads_to_a_square_as_the_model_does(pad: Generator) -> None:
    picture = scale_picture(pad, Image.new("RGB", (64, 32), (255, 255, 255)), 576)
    assert picture.size == (48, 48)
    background = tuple(round(255 * m) for m in pad.image_processor.image_mean)
    assert all(abs(a - b) <= 1 for a, b in zip(picture.getpixel((24, 1)), background))  # padded band
    assert picture.getpixel((24, 24)) == (255, 255, 255)


def test_anyres_picture_shows_the_whole_image_beside_its_crops(anyres: Generator) -> None:
    picture = scale_picture(anyres, Image.new("RGB", (96, 48), (10, 200, 10)), 36)
    side = 48
    # A 2:1 image on this checkpoint's pinpoints is cut into 1 row x 2 columns of 48 px crops.
    assert picture.size == (side + GAP + 2 * side, side)
