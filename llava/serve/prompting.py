"""Chat messages → one prompt string in the checkpoint's conversation template.

Used by the OpenAI-compatible API (whose messages carry text and image parts) and the CLI. Images
become `<image>` placeholders where they stand in a message, so images and placeholders always match.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.conversation import Conversation, SeparatorStyle, get_conv_template


@dataclass
class ChatTurn:
    """One message: its role ("system", "user" or "assistant"), text and image payloads in order."""

    role: str
    parts: list[tuple[str, str]] = field(default_factory=list)
    """("text", text) or ("image", payload) in the order they appear."""


def template_stop(conv: Conversation) -> str | None:
    """The string that ends a reply in this template (as the original demo sends it as `stop`)."""
    if conv.sep_style in (SeparatorStyle.SINGLE, SeparatorStyle.MPT, SeparatorStyle.CHATML):
        return conv.sep
    return conv.sep2


def build_chat_prompt(turns: Sequence[ChatTurn], conv_mode: str) -> tuple[str, list[str], str | None]:
    """Lay out a chat for the model: returns (prompt, image payloads in placeholder order, stop string).

    System turns replace the template's system prompt; user and assistant turns must alternate
    starting with the user (consecutive turns of one role are joined); the prompt ends with the
    assistant's turn to write.
    """
    conv = get_conv_template(conv_mode)
    images: list[str] = []
    merged: list[tuple[str, str]] = []
    for turn in turns:
        text = _turn_text(turn, images)
        if turn.role in ("system", "developer"):
            conv.system = text
            continue
        if turn.role not in ("user", "assistant"):
            raise ValueError(f"unknown message role {turn.role!r}; use system, user or assistant")
        if merged and merged[-1][0] == turn.role:
            merged[-1] = (turn.role, merged[-1][1] + "\n" + text)
        else:
            merged.append((turn.role, text))
    if not merged or merged[0][0] != "user":
        raise ValueError("the conversation must start with a user message (after any system message)")
    if merged[-1][0] != "user":
        raise ValueError("the last message must be from the user")
    for role, text in merged:
        conv.append_message(conv.roles[0] if role == "user" else conv.roles[1], text)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt(), images, template_stop(conv)


def _turn_text(turn: ChatTurn, images: list[str]) -> str:
    pieces = []
    for kind, value in turn.parts:
        if kind == "image":
            images.append(value)
            pieces.append(DEFAULT_IMAGE_TOKEN)
        else:
            pieces.append(value)
    return "\n".join(pieces)
