"""One conversation → token ids and labels, the same way for every conversation template.

The prompt is laid out by the template (`llava.conversation`, templates are data); the labels keep
the assistant turns (with the separator that ends them, as LLaVA trains) and mask everything else.
Each assistant turn's token range is found by tokenising the prompt up to the turn's first and
last character; every such prefix must tokenise to a prefix of the whole prompt's tokens, or the
turn boundaries would not be token boundaries and the labels would be shifted. That case raises
`TemplateMismatchError` naming the template, instead of the original's warning and a zeroed sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llava.constants import (
    DEFAULT_IM_END_TOKEN,
    DEFAULT_IM_START_TOKEN,
    DEFAULT_IMAGE_TOKEN,
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
)
from llava.conversation import Conversation, SeparatorStyle, conv_templates
from llava.mm_utils import tokenizer_image_token

HUMAN_ROLES = ("human", "user")
ASSISTANT_ROLES = ("gpt", "assistant")
# Names the LLaVA/M3 scripts pass as --version that are not keys of conv_templates.
TEMPLATE_ALIASES = {"mistral": "mistral_instruct"}


class TemplateMismatchError(ValueError):
    """The turn-by-turn tokenisation disagrees with the tokenisation of the whole prompt."""


@dataclass(frozen=True)
class ConversationTemplate:
    """A named conversation template plus how `<image>` is written into the user turn."""

    name: str
    conv: Conversation
    mm_use_im_start_end: bool = False

    @classmethod
    def from_name(cls, name: str, mm_use_im_start_end: bool = False) -> ConversationTemplate:
        key = TEMPLATE_ALIASES.get(name, name)
        if key not in conv_templates:
            valid = sorted({*conv_templates, *TEMPLATE_ALIASES})
            raise ValueError(f"unknown conversation template --version {name!r}; valid names: {', '.join(valid)}")
        return cls(name, conv_templates[key], mm_use_im_start_end)

    @property
    def is_plain(self) -> bool:
        return self.conv.sep_style == SeparatorStyle.PLAIN


@dataclass
class RenderedPrompt:
    """The prompt string and the character spans [start, end) the loss is computed on."""

    text: str
    target_spans: list[tuple[int, int]]


def render_conversation(
    turns: Sequence[dict[str, Any]], template: ConversationTemplate, num_images: int
) -> RenderedPrompt:
    """Lay out validated `turns` (alternating human/gpt, `{"from", "value"}`) as the template says.

    With one image, the `<image>` placeholder is moved to the front of its turn followed by a
    newline, as LLaVA's `preprocess_multimodal` does (the checkpoints were trained so). The plain
    template (projector pretraining) keeps only the images of the user turn and appends each
    answer plus the separator, as LLaVA's `preprocess_plain`: "<image>caption\\n".
    """
    values = [_normalise_images(turn["value"], template, num_images) for turn in turns]
    if template.is_plain:
        return _render_plain(values, template)
    conv = template.conv
    roles = [conv.roles[0] if i % 2 == 0 else conv.roles[1] for i in range(len(values))]
    full = _prompt(conv, list(zip(roles, values)))
    spans = []
    for k in range(1, len(values), 2):
        before = _prompt(conv, [*zip(roles[:k], values[:k]), (roles[k], None)])
        upto = _prompt(conv, list(zip(roles[: k + 1], values[: k + 1])))
        if not (full.startswith(before) and full.startswith(upto) and len(before) < len(upto)):
            raise TemplateMismatchError(
                f"conversation template {template.name!r}: the prompt of the first {k + 1} turns is not a prefix of "
                "the whole prompt, so the assistant turns cannot be located; this template cannot be trained on"
            )
        spans.append((len(before), len(upto)))
    return RenderedPrompt(full, spans)


def _prompt(conv: Conversation, messages: list[tuple[str, str | None]]) -> str:
    c = conv.copy()
    c.messages = [[role, text] for role, text in messages]
    return c.get_prompt()


def _normalise_images(value: str, template: ConversationTemplate, num_images: int) -> str:
    if DEFAULT_IMAGE_TOKEN not in value:
        return value
    if num_images == 1 and not template.is_plain:
        value = DEFAULT_IMAGE_TOKEN + "\n" + value.replace(DEFAULT_IMAGE_TOKEN, "").strip()
        if "mmtag" in template.conv.version:
            value = value.replace(DEFAULT_IMAGE_TOKEN, "<Image>" + DEFAULT_IMAGE_TOKEN + "</Image>")
    if template.mm_use_im_start_end:
        value = value.replace(DEFAULT_IMAGE_TOKEN, DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN)
    return value


def _render_plain(values: list[str], template: ConversationTemplate) -> RenderedPrompt:
    image = DEFAULT_IMAGE_TOKEN
    if template.mm_use_im_start_end:
        image = DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN
    text, spans = "", []
    for question, answer in zip(values[0::2], values[1::2]):
        text += image * question.count(image)
        spans.append((len(text), len(text) + len(answer) + len(template.conv.sep)))
        text += answer + template.conv.sep
    return RenderedPrompt(text, spans)


def tokenize_with_labels(prompt: RenderedPrompt, tokenizer: Any, template_name: str) -> tuple[list[int], list[int]]:
    """Token ids of the prompt (`IMAGE_TOKEN_INDEX` per `<image>`) and labels: ids inside the target spans.

    Raises `TemplateMismatchError` naming the template when a span boundary falls inside a token,
    or a span tokenises to nothing.
    """
    input_ids = tokenizer_image_token(prompt.text, tokenizer)
    labels = [IGNORE_INDEX] * len(input_ids)
    for start, end in prompt.target_spans:
        first = _prefix_length(prompt.text, start, input_ids, tokenizer, template_name)
        last = _prefix_length(prompt.text, end, input_ids, tokenizer, template_name)
        if last <= first:
            raise TemplateMismatchError(
                f"conversation template {template_name!r}: the assistant turn {prompt.text[start:end]!r} "
                "tokenises to no tokens"
            )
        labels[first:last] = input_ids[first:last]
    return input_ids, labels


def _prefix_length(text: str, position: int, input_ids: list[int], tokenizer: Any, template_name: str) -> int:
    prefix = tokenizer_image_token(text[:position], tokenizer)
    if prefix != input_ids[: len(prefix)]:
        raise TemplateMismatchError(
            f"conversation template {template_name!r}: tokenising the prompt turn by turn does not match the "
            f"tokenisation of the whole prompt at character {position} (...{text[max(0, position - 30) : position]!r}"
            f" | {text[position : position + 30]!r}...); the labels would be misaligned. The tokenizer merges "
            "across the turn boundary (or appends an EOS to every call): use the template the model was trained "
            "with or a tokenizer that keeps the separator tokens whole"
        )
    return len(prefix)


def preprocess(
    turns: Sequence[dict[str, Any]], template: ConversationTemplate, tokenizer: Any, num_images: int
) -> tuple[list[int], list[int]]:
    """A validated conversation → (input_ids, labels), both lists of the same length."""
    prompt = render_conversation(turns, template, num_images)
    input_ids, labels = tokenize_with_labels(prompt, tokenizer, template.name)
    if IMAGE_TOKEN_INDEX in labels:  # an <image> inside an assistant turn: validation should have caught it
        raise ValueError(f"conversation template {template.name!r}: an <image> placeholder landed in the labels")
    return input_ids, labels
