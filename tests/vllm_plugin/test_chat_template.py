"""The plugin's Jinja chat templates render exactly what `Conversation.get_prompt()` builds (no vLLM needed)."""

from __future__ import annotations

import pytest

from llava.conversation import SeparatorStyle, conv_templates, get_conv_template
from llava.testing import build_tiny_tokenizer
from llava.vllm_plugin.chat_template import chat_template_path, jinja_chat_template

CHAT_TEMPLATES = sorted(
    name
    for name, conv in conv_templates.items()
    if "mmtag" not in conv.version and conv.sep_style != SeparatorStyle.PLAIN and not conv.messages
)
TURNS = [("user", "<image>\nWhat is in the image?"), ("assistant", "A red circle."), ("user", "And its size?")]


def expected_prompt(name: str, turns: list[tuple[str, str]], system: str | None) -> str:
    conv = get_conv_template(name)
    if system is not None:
        conv.system = system
    for role, text in turns:
        conv.append_message(conv.roles[0] if role == "user" else conv.roles[1], text)
    if turns[-1][0] == "user":
        conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


@pytest.mark.parametrize("name", CHAT_TEMPLATES)
@pytest.mark.parametrize("system", [None, "Answer in one word."])
@pytest.mark.parametrize("num_turns", [1, 3])
def test_template_renders_like_get_prompt(name: str, system: str | None, num_turns: int) -> None:
    turns = TURNS[:num_turns]
    messages = ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": role, "content": text} for role, text in turns
    ]
    rendered = build_tiny_tokenizer().apply_chat_template(
        messages, chat_template=jinja_chat_template(get_conv_template(name)), tokenize=False, add_generation_prompt=True
    )
    assert rendered == expected_prompt(name, turns, system)


def test_templates_without_a_chat_form_are_refused() -> None:
    with pytest.raises(ValueError, match="<Image> tags"):
        jinja_chat_template(get_conv_template("v1_mmtag"))
    with pytest.raises(ValueError, match="pretraining"):
        jinja_chat_template(get_conv_template("plain"))


def test_checkpoint_template_file(tiny_llava_pad, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file vLLM is handed holds the template of the checkpoint's name (no conv_template stored)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = chat_template_path(str(tiny_llava_pad))
    assert path.is_relative_to(tmp_path)
    assert path.read_text() == jinja_chat_template(get_conv_template("llava_v1"))
    assert chat_template_path(str(tiny_llava_pad)) == path
