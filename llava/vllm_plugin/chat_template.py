"""Chat templates for vLLM's OpenAI server, made from the checkpoint's own conversation template.

M3 checkpoints carry no Jinja chat template: LLaVA builds prompts with `llava.conversation`. vLLM's
chat endpoint needs one, so the plugin writes the Jinja equivalent of the checkpoint's conversation
template (its `conv_template`, else the one its name implies, as everywhere in llava) and hands vLLM
the file. The output equals `Conversation.get_prompt()` for the same turns (tests/vllm checks each
template); vLLM has already put each image's `<image>` line at the start of its message, where LLaVA
puts it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from llava.conversation import Conversation, SeparatorStyle, get_conv_template, select_conv_mode

# Shared head: the system prompt (a leading system message replaces the template's) and the turns.
_HEAD = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set system = DEFAULT_SYSTEM -%}{%- set turns = messages -%}{%- endif -%}"
    "{%- macro role(message) -%}{{ USER if message['role'] == 'user' else ASSISTANT }}{%- endmacro -%}"
)

_BODIES = {
    SeparatorStyle.TWO: (
        "{{- system + SEP -}}"
        "{%- for m in turns -%}{{- role(m) + ': ' + m['content'] + (SEP if loop.index0 % 2 == 0 else SEP2) -}}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- ASSISTANT + ':' -}}{%- endif -%}"
    ),
    SeparatorStyle.SINGLE: (
        "{{- system + SEP -}}"
        "{%- for m in turns -%}{{- role(m) + ': ' + m['content'] + SEP -}}{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- ASSISTANT + ':' -}}{%- endif -%}"
    ),
    SeparatorStyle.MPT: (
        "{{- system + SEP -}}"
        "{%- for m in turns -%}{{- role(m) + m['content'] + SEP -}}{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- ASSISTANT -}}{%- endif -%}"
    ),
    SeparatorStyle.CHATML: (
        "{%- if system -%}{{- system + SEP + '\\n' -}}{%- endif -%}"
        "{%- for m in turns -%}{{- role(m) + '\\n' + m['content'] + SEP + '\\n' -}}{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- ASSISTANT + '\\n' -}}{%- endif -%}"
    ),
    # The system prompt goes into the first user turn; the first turn has no leading SEP (the
    # tokenizer adds the BOS itself).
    SeparatorStyle.LLAMA_2: (
        "{%- for m in turns -%}"
        "{%- set text = m['content'] -%}"
        "{%- if loop.first and system -%}{%- set text = '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + text -%}"
        "{%- endif -%}"
        "{%- if loop.index0 % 2 == 0 -%}{{- ('' if loop.first else SEP) + '[INST] ' + text + ' [/INST]' -}}"
        "{%- else -%}{{- ' ' + text + ' ' + SEP2 -}}{%- endif -%}"
        "{%- endfor -%}"
    ),
}


def jinja_chat_template(conv: Conversation) -> str:
    """The Jinja source that renders OpenAI-style messages as `conv.get_prompt()` does."""
    if "mmtag" in conv.version:
        raise ValueError(
            f"conversation template version {conv.version!r} wraps images in <Image> tags, which vLLM's "
            "chat endpoint cannot reproduce; send prompts to LLM.generate or /v1/completions instead"
        )
    body = _BODIES.get(conv.sep_style)
    if body is None:
        raise ValueError(
            f"conversation templates of style {conv.sep_style.name} have no chat form (they are for "
            f"pretraining); supported styles: {[style.name for style in _BODIES]}"
        )
    constants = {
        "DEFAULT_SYSTEM": conv.system,
        "USER": conv.roles[0],
        "ASSISTANT": conv.roles[1],
        "SEP": conv.sep,
        "SEP2": conv.sep2 or "",
    }
    header = "".join(f"{{%- set {name} = {json.dumps(value)} -%}}" for name, value in constants.items())
    return header + _HEAD + body


def conv_template_name(model_path: str) -> str:
    """The checkpoint's conversation template: its stored `conv_template`, else the one its name implies."""
    from transformers import AutoConfig

    from llava.mm_utils import get_model_name_from_path

    stored = getattr(AutoConfig.from_pretrained(model_path), "conv_template", None)
    return select_conv_mode(get_model_name_from_path(model_path), stored)


def chat_template_path(model_path: str) -> Path:
    """A file holding the checkpoint's chat template, written once under the user's cache folder.

    vLLM's fallback hook asks for a path; the file name carries a hash of the content, so a changed
    template never reuses a stale file and concurrent servers write identical bytes.
    """
    text = jinja_chat_template(get_conv_template(conv_template_name(model_path)))
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llava" / "chat_templates"
    path = cache / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.jinja"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(text)
        partial.replace(path)
    return path
