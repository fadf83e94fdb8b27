"""The one prompt → generate path: prompts, markers, padding, stop rule and decoding, on a tiny real model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LogitsProcessor

from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
from llava.conversation import conv_templates, get_conv_template, template_stop
from llava.generation import (
    ChatTurn,
    Generator,
    PromptBatch,
    SamplingParams,
    StopStrings,
    build_chat_prompt,
    build_prompt,
    cut_at_stop,
    end_token_ids,
    format_image_query,
    left_pad,
    pad_token_id,
    tokenize_prompt,
)
from llava.model.builder import load_pretrained_model
from llava.train.preprocess import ConversationTemplate, render_conversation

ANSWER = "There is a red circle"
NEXT_QUESTION = "how many shapes?"
GREEDY = SamplingParams(temperature=0, max_new_tokens=64)


@pytest.fixture(scope="module")
def generator(tiny_llava_pad: Path) -> Generator:
    tokenizer, model, image_processor, _ = load_pretrained_model(str(tiny_llava_pad), None, "llava-v1.5", device="cpu")
    return Generator(tokenizer, model, image_processor, "llava-v1.5-tiny-m3")


class ForceTokens(LogitsProcessor):
    """Greedy decoding that can only follow `ids` (then the end token): a model made to write a given text."""

    def __init__(self, ids: list[int], end_id: int) -> None:
        self.ids, self.end_id, self.steps = ids, end_id, 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.steps += 1
        step = input_ids.shape[1]  # generation from embeddings hands over the new tokens only
        wanted = self.ids[step] if step < len(self.ids) else self.end_id
        return torch.full_like(scores, float("-inf")).index_fill(1, torch.tensor([wanted]), 0.0)


def trained_continuation(name: str) -> tuple[str, str]:
    """(the text training puts before the first answer, the text from that answer on) for template `name`:
    a two-round chat about one image laid out as `llava.train.preprocess` lays out training data."""
    turns = [
        {"from": "human", "value": f"{DEFAULT_IMAGE_TOKEN}\nWhat is in the image?"},
        {"from": "gpt", "value": ANSWER},
        {"from": "human", "value": NEXT_QUESTION},
        {"from": "gpt", "value": "three"},
    ]
    rendered = render_conversation(turns, ConversationTemplate.from_name(name), num_images=1)
    start = rendered.target_spans[0][0]
    return rendered.text[:start], rendered.text[start:]


@pytest.mark.parametrize("name", sorted(conv_templates))
def test_training_ends_every_answer_with_the_template_stop(name: str) -> None:
    stop = template_stop(get_conv_template(name))
    turns = [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": ANSWER}]
    rendered = render_conversation(turns, ConversationTemplate.from_name(name), num_images=0)
    ((start, end),) = rendered.target_spans
    target = rendered.text[start:end]
    assert stop is not None and stop in target, (name, target)
    assert target[: target.rindex(stop)].strip() == ANSWER and not target[target.rindex(stop) + len(stop) :].strip()


@pytest.mark.parametrize("name", sorted(conv_templates))
def test_a_generated_answer_is_cut_where_the_template_ends_the_turn(generator: Generator, name: str) -> None:
    """The tiny model, made to write what training taught for this template (the answer, the turn's end and
    the next round), answers exactly the answer and stops at the turn's end, not in the next round."""
    _, continuation = trained_continuation(name)
    ids = generator.tokenizer(continuation, add_special_tokens=False).input_ids
    forced = ForceTokens(ids, generator.tokenizer.eos_token_id)
    templated = Generator(generator.tokenizer, generator.model, generator.image_processor, "tiny", conv_mode=name)
    prompt = templated.tokenize(templated.prompt("What is in the image?", 1))
    pixels = templated.encode(templated.pixels([_image()]))
    (answer,) = templated.answer(PromptBatch([prompt], pixels, [(48, 48)]), 9, GREEDY, logits_processor=forced)
    assert answer == ANSWER
    # Stopped at the end of the turn: well before the forced text (next round included) ran out.
    assert forced.steps < len(ids)
    written = generator.tokenizer.decode(ids[: forced.steps], skip_special_tokens=True)
    assert NEXT_QUESTION not in written and ANSWER in written


def test_llama_2_stops_at_its_closing_separator_not_at_the_opening_one() -> None:
    for name in ("llama_2", "llava_llama_2", "mistral_instruct"):
        assert template_stop(get_conv_template(name)) == "</s>"
    assert template_stop(get_conv_template("plain")) == "\n"


def test_prompts_put_image_markers_first_or_where_the_placeholder_is() -> None:
    assert format_image_query("What?", 2) == "<image>\n<image>\nWhat?"
    assert format_image_query("A <image-placeholder> and <image-placeholder>?", 2) == "A <image> and <image>?"
    assert format_image_query("<image>\nWhat?", 1) == "<image>\nWhat?"
    assert format_image_query("What?", 0) == "What?"
    assert build_prompt("llava_v1", "What?", 1).endswith("USER: <image>\nWhat? ASSISTANT:")


def test_start_end_markers_wrap_each_image_at_tokenisation(generator: Generator) -> None:
    tokenizer = generator.tokenizer
    plain = tokenize_prompt("USER: <image>\nhi", tokenizer)
    wrapped = tokenize_prompt("USER: <image>\nhi", tokenizer, mm_use_im_start_end=True)
    assert plain.count(IMAGE_TOKEN_INDEX) == wrapped.count(IMAGE_TOKEN_INDEX) == 1
    image_at = wrapped.index(IMAGE_TOKEN_INDEX)
    assert tokenizer.decode(wrapped[:image_at]).endswith("<im_start>")
    assert tokenizer.decode(wrapped[image_at + 1 :]).startswith("<im_end>")


def test_chat_prompt_places_images_and_checks_roles() -> None:
    turns = [
        ChatTurn("system", [("text", "Be brief.")]),
        ChatTurn("user", [("image", "first"), ("text", "What is this?")]),
        ChatTurn("assistant", [("text", "A cat.")]),
        ChatTurn("user", [("text", "And this?"), ("image", "second")]),
    ]
    chat = build_chat_prompt(turns, "llava_v1")
    prompt, images, stop = chat
    assert prompt == "Be brief. USER: <image>\nWhat is this? ASSISTANT: A cat.</s>USER: And this?\n<image> ASSISTANT:"
    assert images == ["first", "second"] and stop == "</s>"
    with pytest.raises(ValueError, match="must start with a user message"):
        build_chat_prompt([ChatTurn("assistant", [("text", "hi")])], "llava_v1")
    with pytest.raises(ValueError, match="last message must be from the user"):
        build_chat_prompt(turns[:3], "llava_v1")
    with pytest.raises(ValueError, match="unknown message role 'tool'"):
        build_chat_prompt([ChatTurn("tool", [("text", "x")])], "llava_v1")


def test_left_pad_and_the_pad_id_fallback(generator: Generator) -> None:
    ids, mask = left_pad([[5, 6, 7], [8]], 0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    tokenizer = generator.tokenizer
    assert pad_token_id(tokenizer) == tokenizer.pad_token_id
    without_pad = type("Tokenizer", (), {"pad_token_id": None, "eos_token_id": 2})()
    assert pad_token_id(without_pad) == 2


def test_stop_strings_judge_each_row_alone(generator: Generator) -> None:
    tokenizer = generator.tokenizer
    stop = StopStrings(["###"], generator.decode_batch)
    rows = [
        tokenizer("yes###", add_special_tokens=False).input_ids,
        tokenizer("no no", add_special_tokens=False).input_ids,
    ]
    width = max(map(len, rows))
    batch = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
    assert stop(batch, None).tolist() == [True, False]
    assert StopStrings([], generator.decode_batch)(batch, None).tolist() == [False, False]
    assert cut_at_stop(" yes### no", ["###", "</s>"]) == "yes"


def test_end_tokens_include_special_token_stops(generator: Generator) -> None:
    tokenizer, model = generator.tokenizer, generator.model
    assert end_token_ids(tokenizer, model) == [tokenizer.eos_token_id]
    assert end_token_ids(tokenizer, model, ["</s>", "###", "<pad>"]) == sorted({tokenizer.eos_token_id, 3})


def test_a_batch_answers_as_each_prompt_alone_at_its_own_budget(generator: Generator) -> None:
    prompts = [generator.tokenize(generator.prompt(q, 1)) for q in ("What is in the image?", "Describe the picture.")]
    encoded = generator.encode(generator.pixels([_image(), _image((20, 90, 200))]))
    params = SamplingParams(temperature=0, max_new_tokens=6)
    both = generator.answer(PromptBatch(prompts, encoded), [9, 144], params)
    alone = [
        generator.answer(PromptBatch([p], encoded.select([i])), s, params)[0]
        for i, (p, s) in enumerate(zip(prompts, [9, 144]))
    ]
    assert both == alone


def test_beam_search_and_sampling_run_through_the_same_path(generator: Generator) -> None:
    prompt = generator.tokenize(generator.prompt("What is in the image?", 1))
    encoded = generator.encode(generator.pixels([_image()]))
    beams = generator.answer(
        PromptBatch([prompt] * 2, encoded.select([0, 0])), 9, SamplingParams(0, None, 5, num_beams=3)
    )
    assert beams[0] == beams[1]
    torch.manual_seed(0)
    sampled = generator.answer(PromptBatch([prompt], encoded), 9, SamplingParams(1.0, 0.9, 5, num_beams=2))
    assert isinstance(sampled[0], str)
    with pytest.raises(ValueError, match="one num_beams"):
        generator.generate(PromptBatch([prompt] * 2), 9, [SamplingParams(0), SamplingParams(0, num_beams=2)])


def _image(color: tuple[int, int, int] = (200, 40, 40)):
    from PIL import Image

    return Image.new("RGB", (48, 48), color)
