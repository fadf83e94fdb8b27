"""Conversation templates reproduce the original LLaVA prompt strings the checkpoints were trained on."""

import pytest
from PIL import Image

from llava.conversation import (
    Conversation,
    SeparatorStyle,
    conv_templates,
    default_conversation,
    get_conv_template,
    select_conv_mode,
)

HUMAN_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


def _chat(name: str, *turns: str | tuple | None) -> Conversation:
    conv = get_conv_template(name)
    for i, message in enumerate(turns):
        conv.append_message(conv.roles[i % 2], message)
    return conv


def test_llava_v1_two_turns():
    conv = _chat("llava_v1", "<image>\nWhat is this?", "A cat.", "What colour?", None)
    assert conv.get_prompt() == (
        HUMAN_SYSTEM + " USER: <image>\nWhat is this? ASSISTANT: A cat.</s>USER: What colour? ASSISTANT:"
    )


def test_vicuna_v1_keeps_its_user_system_prompt():
    assert default_conversation is conv_templates["vicuna_v1"]
    assert default_conversation.system.startswith("A chat between a curious user and")
    assert default_conversation.roles == ("USER", "ASSISTANT")


def test_llava_v0_single_separator():
    conv = _chat("llava_v0", "Hi", None)
    assert conv.get_prompt() == HUMAN_SYSTEM + "###Human: Hi###Assistant:"


def test_plain():
    assert _chat("plain", "<image>", None).get_prompt() == "<image>\n"
    assert _chat("plain", "<image>", "a red square").get_prompt() == "<image>\na red square"


def test_llava_llama_2_system_only_in_first_turn():
    conv = _chat("llava_llama_2", "<image>\nWhat is this?", "A cat.", "Sure?", None)
    system = conv_templates["llava_llama_2"].system
    assert conv.get_prompt() == (
        f"[INST] <<SYS>>\n{system}\n<</SYS>>\n\n<image>\nWhat is this? [/INST] A cat. </s><s>[INST] Sure? [/INST]"
    )


def test_mistral_instruct_has_no_system_block():
    conv = _chat("mistral_instruct", "<image>\nWhat is this?", "A cat.", "Sure?", None)
    assert conv.get_prompt() == "[INST] <image>\nWhat is this? [/INST] A cat. </s>[INST] Sure? [/INST]"


def test_chatml_direct_is_mpt_style_without_newlines():
    conv = _chat("chatml_direct", "<image>\nWhat is this?", None)
    assert conv.get_prompt() == (
        "<|im_start|>system\nAnswer the questions.<|im_end|>"
        "<|im_start|>user\n<image>\nWhat is this?<|im_end|><|im_start|>assistant\n"
    )


def test_qwen_chatml():
    conv = _chat("qwen", "<image>\nWhat is this?", "A cat.", "Sure?", None)
    assert conv.get_prompt() == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<image>\nWhat is this?<|im_end|>\n"
        "<|im_start|>assistant\nA cat.<|im_end|>\n"
        "<|im_start|>user\nSure?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert conv_templates["chatml"].sep_style == SeparatorStyle.CHATML


def test_image_tuple_contributes_text_with_placeholder_first():
    image = Image.new("RGB", (20, 10), (255, 0, 0))
    conv = _chat("llava_v1", ("What is this?\n<image>", image, "Default"), None)
    assert conv.get_prompt() == HUMAN_SYSTEM + " USER: <image>\nWhat is this? ASSISTANT:"
    assert conv.dict()["messages"][0] == ["USER", "What is this?\n<image>"]


def test_mmtag_inserts_image_turn():
    image = Image.new("RGB", (8, 8))
    conv = _chat("v1_mmtag", ("<image>\nWhat?", image, "Default"), None)
    assert conv.get_prompt().endswith(" USER: <Image><image></Image> ASSISTANT: Received.</s>USER: What? ASSISTANT:")


def test_get_images_and_gradio_chatbot():
    image = Image.new("RGB", (40, 20), (0, 255, 0))
    conv = _chat("llava_v1", ("<image>\nWhat?", image, "Pad"), "Green.", "Sure?", None)
    (padded,) = conv.get_images()
    assert padded.size == (40, 40)
    (encoded,) = conv.get_images(return_pil=False)
    assert isinstance(encoded, str)

    chat = conv.to_gradio_chatbot()
    assert [m["role"] for m in chat] == ["user", "assistant", "user"]
    assert chat[0]["content"].startswith('<img src="data:image/jpeg;base64,')
    assert chat[0]["content"].endswith("What?")
    assert chat[1] == {"role": "assistant", "content": "Green."}


def test_templates_are_not_mutated_by_copies():
    conv = get_conv_template("llava_v1")
    conv.append_message("USER", "hi")
    assert conv_templates["llava_v1"].messages == ()
    with pytest.raises(TypeError, match="copy"):
        conv_templates["llava_v1"].append_message("USER", "hi")


@pytest.mark.parametrize(
    ("model_name", "expected"),
    [
        ("llava-v1.5-7b-m3", "llava_v1"),
        ("llava-next-vicuna-7b-m3", "llava_v1"),
        ("mucai/llava-next-vicuna-7b-m3", "llava_v1"),
        ("llava-llama-2-13b-chat", "llava_llama_2"),
        ("llava-v1.6-mistral-7b", "mistral_instruct"),
        ("llava-v1.6-34b", "chatml_direct"),
        ("llava-qwen-7b", "qwen"),
        ("llava-mpt-7b", "mpt"),
        ("my-model", "llava_v0"),
    ],
)
def test_select_conv_mode_from_name(model_name, expected):
    assert select_conv_mode(model_name) == expected


def test_stored_template_wins():
    assert select_conv_mode("llava-v1.5-7b-m3", stored="plain") == "plain"


def test_unknown_template_names_the_valid_ones():
    with pytest.raises(ValueError, match="llava_v1"):
        select_conv_mode("llava-v1.5-7b", stored="nope")
    with pytest.raises(ValueError, match="unknown conversation template 'nope'.*llava_v1"):
        get_conv_template("nope")


def test_registry_keys():
    expected = {
        "default", "v0", "v1", "vicuna_v1", "llama_2", "mistral_instruct", "chatml_direct", "mistral_direct",
        "plain", "v0_plain", "llava_v0", "v0_mmtag", "llava_v1", "v1_mmtag", "llava_llama_2", "mpt", "qwen",
        "chatml",
    }  # fmt: skip
    assert set(conv_templates) == expected
