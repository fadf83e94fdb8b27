"""Conversation templates: how a chat is laid out as one prompt string (names kept from the original LLaVA).

A template is data: a `Conversation` holding the system prompt, the two role names, the separators and
a `SeparatorStyle` saying how they are joined. `get_prompt()` reproduces the original LLaVA strings
exactly, because the released checkpoints were trained on them.

A user message may be a tuple `(text, image, image_process_mode)` as the web demo builds it; its text
goes into the prompt (with the `<image>` placeholder moved to the front) and its image is returned by
`get_images()`.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
from collections.abc import Sequence
from enum import Enum, auto
from io import BytesIO
from typing import Any

from PIL import Image

from llava.constants import DEFAULT_IMAGE_TOKEN

logger = logging.getLogger(__name__)

# The background used by the demo's "Pad" mode: CLIP's mean colour in 0..255.
_PAD_COLOR = (122, 116, 104)


class SeparatorStyle(Enum):
    """How roles, messages and separators are joined into a prompt."""

    SINGLE = auto()  # "<system><sep><role>: <msg><sep>..."                        (v0, "###")
    TWO = auto()  # like SINGLE, alternating sep (after user) and sep2 (after reply) (v1)
    MPT = auto()  # "<system><sep><role><msg><sep>..." with ChatML-like roles, no ": "
    PLAIN = auto()  # messages only, no system or roles                              (pretraining)
    LLAMA_2 = auto()  # "[INST] <<SYS>>...<</SYS>> msg [/INST] reply </s><s>[INST] ..."
    CHATML = auto()  # "<|im_start|>role\nmsg<|im_end|>\n..."                       (Qwen)


@dataclasses.dataclass
class Conversation:
    """A chat history plus the template that turns it into a prompt.

    `messages` holds `[role, message]` pairs; a message of `None` marks the turn the model is to write.
    The module-level templates keep `messages` as an empty tuple so they cannot be appended to by
    accident: call `copy()` (or `get_conv_template`) first.
    """

    system: str
    roles: Sequence[str]
    messages: Sequence[Any]
    offset: int
    sep_style: SeparatorStyle = SeparatorStyle.SINGLE
    sep: str = "###"
    sep2: str | None = None
    version: str = "Unknown"
    # Set by the web demo when a turn must not be sent to the model (kept from the original).
    skip_next: bool = False

    def _messages_for_prompt(self) -> list[tuple[str, Any]]:
        """The messages with the first image turn rewritten as the original does: placeholder first."""
        messages = [(role, message) for role, message in self.messages]
        if messages and isinstance(messages[0][1], tuple):
            init_role, init_msg = messages[0]
            text = init_msg[0].replace(DEFAULT_IMAGE_TOKEN, "").strip()
            if "mmtag" in self.version:
                messages[0] = (init_role, text)
                messages.insert(0, (self.roles[0], "<Image><image></Image>"))
                messages.insert(1, (self.roles[1], "Received."))
            else:
                messages[0] = (init_role, DEFAULT_IMAGE_TOKEN + "\n" + text)
        return messages

    def get_prompt(self) -> str:
        """The whole conversation as the prompt string the model was trained on."""
        messages = [(role, _text(message)) for role, message in self._messages_for_prompt()]
        style = self.sep_style
        if style == SeparatorStyle.SINGLE:
            ret = self.system + self.sep
            for role, message in messages:
                ret += f"{role}: {message}{self.sep}" if message else f"{role}:"
        elif style == SeparatorStyle.TWO:
            seps = [self.sep, self.sep2]
            ret = self.system + seps[0]
            for i, (role, message) in enumerate(messages):
                ret += f"{role}: {message}{seps[i % 2]}" if message else f"{role}:"
        elif style == SeparatorStyle.MPT:
            ret = self.system + self.sep
            for role, message in messages:
                ret += f"{role}{message}{self.sep}" if message else role
        elif style == SeparatorStyle.LLAMA_2:
            ret = self._llama_2_prompt(messages)
        elif style == SeparatorStyle.PLAIN:
            # sep2 is None in the plain template; the original crashed on a finished reply, we add nothing.
            seps = [self.sep, self.sep2 or ""]
            ret = self.system
            for i, (_, message) in enumerate(messages):
                if message:
                    ret += message + seps[i % 2]
        elif style == SeparatorStyle.CHATML:
            ret = "" if self.system == "" else self.system + self.sep + "\n"
            for role, message in messages:
                ret += f"{role}\n{message}{self.sep}\n" if message else f"{role}\n"
        else:
            raise ValueError(f"invalid separator style: {style}")
        return ret

    def _llama_2_prompt(self, messages: list[tuple[str, str | None]]) -> str:
        """`[INST] <<SYS>>\\nsystem\\n<</SYS>>\\n\\nq1 [/INST] a1 </s><s>[INST] q2 [/INST]`: system in turn one."""
        if not messages or not messages[0][1]:
            raise ValueError("a LLAMA_2 conversation must start with a non-empty user message")
        if messages[0][0] != self.roles[0]:
            raise ValueError(f"a LLAMA_2 conversation must start with the user role {self.roles[0]!r}")
        ret = ""
        for i, (_, message) in enumerate(messages):
            if not message:
                continue
            if i == 0 and self.system:
                message = f"<<SYS>>\n{self.system}\n<</SYS>>\n\n{message}"
            if i % 2 == 0:
                ret += f"{self.sep}[INST] {message} [/INST]"
            else:
                ret += f" {message} {self.sep2}"
        # The first turn gets no leading "<s>": the tokenizer adds the BOS itself.
        return ret.removeprefix(self.sep)

    def append_message(self, role: str, message: Any) -> None:
        """Add a turn; `message` is a string, `None` (the model's turn to come) or a (text, image, mode) tuple."""
        if isinstance(self.messages, tuple):
            raise TypeError("this conversation is a shared template; call .copy() before appending messages")
        self.messages.append([role, message])

    def get_images(self, return_pil: bool = True) -> list[Image.Image] | list[str]:
        """The images of the user turns, prepared by their `image_process_mode`.

        Returns PIL images, or base64 PNG strings with `return_pil=False` (the form sent to a model worker).
        """
        images = []
        for i, (_, message) in enumerate(self.messages[self.offset :]):
            if i % 2 == 0 and isinstance(message, tuple):
                _, image, image_process_mode = message
                if isinstance(image, list):
                    image = image[0]
                images.append(process_image(image, image_process_mode, return_pil=return_pil))
        return images

    def to_gradio_chatbot(self) -> list[dict[str, str]]:
        """The visible history in Gradio's "messages" format: `[{"role": "user"|"assistant", "content": ...}]`.

        An image turn shows the image inline (a base64 JPEG `<img>`) followed by its text.
        """
        ret: list[dict[str, str]] = []
        for i, (_, message) in enumerate(self.messages[self.offset :]):
            if message is None:
                continue
            role = "user" if i % 2 == 0 else "assistant"
            if isinstance(message, tuple):
                text, image, _ = message
                if isinstance(image, list):
                    image = image[0]
                b64 = process_image(image, "Default", return_pil=False, image_format="JPEG")
                img_html = f'<img src="data:image/jpeg;base64,{b64}" alt="user upload image" />'
                message = img_html + text.replace(DEFAULT_IMAGE_TOKEN, "").strip()
            ret.append({"role": role, "content": message})
        return ret

    def copy(self) -> Conversation:
        """A copy whose message list can be appended to without touching the template."""
        return Conversation(
            system=self.system,
            roles=self.roles,
            messages=[[role, message] for role, message in self.messages],
            offset=self.offset,
            sep_style=self.sep_style,
            sep=self.sep,
            sep2=self.sep2,
            version=self.version,
        )

    def dict(self) -> dict[str, Any]:
        """A JSON-friendly view (image turns reduced to their text), as the original logs it."""
        return {
            "system": self.system,
            "roles": self.roles,
            "messages": [[role, _text(message)] for role, message in self.messages],
            "offset": self.offset,
            "sep": self.sep,
            "sep2": self.sep2,
        }


def _text(message: Any) -> str | None:
    """The text of a message that may be a (text, image, image_process_mode) tuple."""
    return message[0] if isinstance(message, tuple) else message


def process_image(
    image: Image.Image,
    image_process_mode: str,
    return_pil: bool = False,
    image_format: str = "PNG",
    max_len: int = 1344,
    min_len: int = 672,
) -> Image.Image | str:
    """Prepare a demo image: "Pad" to square, "Resize" to 336², "Default"/"Crop" unchanged; then cap the long side.

    The long side is limited to `max_len` (and the short side to `min_len`) to keep requests small.
    Returns the PIL image, or a base64 string in `image_format` when `return_pil` is False.
    """
    if image_process_mode == "Pad":
        image = _expand2square(image, _PAD_COLOR)
    elif image_process_mode == "Resize":
        image = image.resize((336, 336))
    elif image_process_mode not in ("Default", "Crop"):
        raise ValueError(f"invalid image_process_mode {image_process_mode!r}; use Pad, Resize, Crop or Default")
    if max(image.size) > max_len:
        max_hw, min_hw = max(image.size), min(image.size)
        aspect_ratio = max_hw / min_hw
        shortest_edge = int(min(max_len / aspect_ratio, min_len, min_hw))
        longest_edge = int(shortest_edge * aspect_ratio)
        width, height = image.size
        new_size = (shortest_edge, longest_edge) if height > width else (longest_edge, shortest_edge)
        image = image.resize(new_size)
    if return_pil:
        return image
    if image_format.upper() in ("JPEG", "JPG") and image.mode != "RGB":
        image = image.convert("RGB")
    buffered = BytesIO()
    image.save(buffered, format=image_format)
    return base64.b64encode(buffered.getvalue()).decode()


def _expand2square(image: Image.Image, background_color: tuple[int, ...]) -> Image.Image:
    """Centre the image on a square canvas of its long side (kept local: llava.mm_utils imports torch)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    result = Image.new(image.mode, (side, side), background_color)
    result.paste(image, ((side - width) // 2, (side - height) // 2))
    return result


_VICUNA_V0_EXAMPLE = (
    "Renewable energy sources are those that can be replenished naturally in a relatively "
    "short amount of time, such as solar, wind, hydro, geothermal, and biomass. "
    "Non-renewable energy sources, on the other hand, are finite and will eventually be "
    "depleted, such as coal, oil, and natural gas. Here are some key differences between "
    "renewable and non-renewable energy sources:\n"
    "1. Availability: Renewable energy sources are virtually inexhaustible, while non-renewable "
    "energy sources are finite and will eventually run out.\n"
    "2. Environmental impact: Renewable energy sources have a much lower environmental impact "
    "than non-renewable sources, which can lead to air and water pollution, greenhouse gas emissions, "
    "and other negative effects.\n"
    "3. Cost: Renewable energy sources can be more expensive to initially set up, but they typically "
    "have lower operational costs than non-renewable sources.\n"
    "4. Reliability: Renewable energy sources are often more reliable and can be used in more remote "
    "locations than non-renewable sources.\n"
    "5. Flexibility: Renewable energy sources are often more flexible and can be adapted to different "
    "situations and needs, while non-renewable sources are more rigid and inflexible.\n"
    "6. Sustainability: Renewable energy sources are more sustainable over the long term, while "
    "non-renewable sources are not, and their depletion can lead to economic and social instability.\n"
)

_HUMAN_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
_USER_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
_MMTAG_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant is able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language."
    "The visual content will be provided with the following format: <Image>visual content</Image>."
)

conv_vicuna_v0 = Conversation(
    system=_HUMAN_SYSTEM,
    roles=("Human", "Assistant"),
    messages=(
        ("Human", "What are the key differences between renewable and non-renewable energy sources?"),
        ("Assistant", _VICUNA_V0_EXAMPLE),
    ),
    offset=2,
    sep_style=SeparatorStyle.SINGLE,
    sep="###",
)

# Vicuna v1.5's own system prompt says "user"; LLaVA v1's says "human" (both kept as trained).
conv_vicuna_v1 = Conversation(
    system=_USER_SYSTEM,
    roles=("USER", "ASSISTANT"),
    version="v1",
    messages=(),
    offset=0,
    sep_style=SeparatorStyle.TWO,
    sep=" ",
    sep2="</s>",
)

conv_llama_2 = Conversation(
    system="You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, "
    "while being safe.  Your answers should not include any harmful, unethical, racist, sexist, toxic, "
    "dangerous, or illegal content. Please ensure that your responses are socially unbiased and positive "
    "in nature.\n\nIf a question does not make any sense, or is not factually coherent, explain why "
    "instead of answering something not correct. If you don't know the answer to a question, please "
    "don't share false information.",
    roles=("USER", "ASSISTANT"),
    version="llama_v2",
    messages=(),
    offset=0,
    sep_style=SeparatorStyle.LLAMA_2,
    sep="<s>",
    sep2="</s>",
)

conv_llava_llama_2 = Conversation(
    system="You are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language.",
    roles=("USER", "ASSISTANT"),
    version="llama_v2",
    messages=(),
    offset=0,
    sep_style=SeparatorStyle.LLAMA_2,
    sep="<s>",
    sep2="</s>",
)

conv_mistral_instruct = Conversation(
    system="",
    roles=("USER", "ASSISTANT"),
    version="llama_v2",
    messages=(),
    offset=0,
    sep_style=SeparatorStyle.LLAMA_2,
    sep="",
    sep2="</s>",
)

# LLaVA-1.6-34B was trained on this MPT-style layout (no newline after <|im_end|>); kept as is.
conv_chatml_direct = Conversation(
    system="<|im_start|>system\nAnswer the questions.",
    roles=("<|im_start|>user\n", "<|im_start|>assistant\n"),
    version="mpt",
    messages=(),
    offset=0,
    sep_style=SeparatorStyle.MPT,
    sep="<|im_end|>",
)

conv_mpt = Conversation(
    system="<|im_start|>system\n"
    "A conversation between a user and an LLM-based AI assistant. The assistant gives helpful and honest answers.",
    roles=("<|im_start|>user\n", "<|im_start|>assistant\n"),
    version="mpt",
    messages=(),
    offset=0,
    sep_style=SeparatorStyle.MPT,
    sep="<|im_end|>",
)

conv_qwen = Conversation(
    system="<|im_start|>system\nYou are a helpful assistant.",
    roles=("<|im_start|>user", "<|im_start|>assistant"),
    version="qwen",
    messages=(),
    offset=0,
    sep_style=SeparatorStyle.CHATML,
    sep="<|im_end|>",
)

conv_llava_plain = Conversation(
    system="",
    roles=("", ""),
    messages=(),
    offset=0,
    sep_style=SeparatorStyle.PLAIN,
    sep="\n",
)

conv_llava_v0 = Conversation(
    system=_HUMAN_SYSTEM,
    roles=("Human", "Assistant"),
    messages=(),
    offset=0,
    sep_style=SeparatorStyle.SINGLE,
    sep="###",
)

conv_llava_v0_mmtag = Conversation(
    system=_MMTAG_SYSTEM,
    roles=("Human", "Assistant"),
    messages=(),
    offset=0,
    sep_style=SeparatorStyle.SINGLE,
    sep="###",
    version="v0_mmtag",
)

conv_llava_v1 = Conversation(
    system=_HUMAN_SYSTEM,
    roles=("USER", "ASSISTANT"),
    version="v1",
    messages=(),
    offset=0,
    sep_style=SeparatorStyle.TWO,
    sep=" ",
    sep2="</s>",
)

conv_llava_v1_mmtag = Conversation(
    system=_MMTAG_SYSTEM,
    roles=("USER", "ASSISTANT"),
    messages=(),
    offset=0,
    sep_style=SeparatorStyle.TWO,
    sep=" ",
    sep2="</s>",
    version="v1_mmtag",
)

default_conversation = conv_vicuna_v1

conv_templates: dict[str, Conversation] = {
    "default": conv_vicuna_v0,
    "v0": conv_vicuna_v0,
    "v1": conv_vicuna_v1,
    "vicuna_v1": conv_vicuna_v1,
    "llama_2": conv_llama_2,
    "mistral_instruct": conv_mistral_instruct,
    "chatml_direct": conv_chatml_direct,
    "mistral_direct": conv_chatml_direct,
    "plain": conv_llava_plain,
    "v0_plain": conv_llava_plain,
    "llava_v0": conv_llava_v0,
    "v0_mmtag": conv_llava_v0_mmtag,
    "llava_v1": conv_llava_v1,
    "v1_mmtag": conv_llava_v1_mmtag,
    "llava_llama_2": conv_llava_llama_2,
    "mpt": conv_mpt,
    "qwen": conv_qwen,
    "chatml": conv_qwen,
}


def template_stop(conv: Conversation) -> str | None:
    """The text that ends the assistant's turn in this template (None: only the end-of-sequence token).

    It is what training puts after every answer (`llava.train.preprocess` labels it), so a model trained
    on the template writes it when its answer is done: the second separator where turns alternate two
    separators (`TWO`: "</s>"; `LLAMA_2`: "</s>", the first separator "<s>" opens the next user turn),
    the one separator otherwise ("###", "<|im_end|>", and "\\n" after a caption for `PLAIN`).
    """
    stop = conv.sep2 if conv.sep_style in (SeparatorStyle.TWO, SeparatorStyle.LLAMA_2) else conv.sep
    return stop or None


def get_conv_template(name: str) -> Conversation:
    """A fresh, appendable copy of the template registered as `name`."""
    if name not in conv_templates:
        raise ValueError(f"unknown conversation template {name!r}; valid names: {', '.join(sorted(conv_templates))}")
    return conv_templates[name].copy()


def select_conv_mode(model_name: str, stored: str | None = None) -> str:
    """The template name to use for a model.

    A template name stored with the checkpoint (`stored`) wins; otherwise it is guessed from the model
    name as the original LLaVA did, with one fix: names with "vicuna" or "llava-next" but no "v1"
    (e.g. "llava-next-vicuna-7b-m3") get `llava_v1`, the template they were trained with, not `llava_v0`.
    """
    if stored:
        if stored not in conv_templates:
            raise ValueError(
                f"unknown conversation template {stored!r} stored with the checkpoint; "
                f"valid names: {', '.join(sorted(conv_templates))}"
            )
        return stored
    name = model_name.lower()
    if "llama-2" in name or "llama2" in name:
        mode = "llava_llama_2"
    elif "mistral" in name:
        mode = "mistral_instruct"
    elif "v1.6-34b" in name:
        mode = "chatml_direct"
    elif "qwen" in name:
        mode = "qwen"
    elif "v1" in name or "vicuna" in name or "llava-next" in name:
        mode = "llava_v1"
    elif "mpt" in name:
        mode = "mpt"
    else:
        mode = "llava_v0"
    logger.debug("conversation template %s chosen for model %s", mode, model_name)
    return mode
