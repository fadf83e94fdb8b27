"""A text prompt's ids as the checkpoint was trained on them, from the ids vLLM's tokenizer made.

vLLM tokenizes a text prompt with its own tokenizer (transformers 5, the whole string in one call) before
the multimodal processor sees it, and hands the processor ids only. The checkpoint was trained on other
ids: `load_tokenizer`'s (transformers 4's sentencepiece reading, see llava/model/tokenizer.py), each
stretch between `<image>` markers tokenized on its own (`tokenizer_image_token`). So the processor turns
vLLM's ids back into the text and tokenizes that our way.
"""

from __future__ import annotations

import itertools
from typing import Any

from llava.mm_utils import tokenizer_image_token


def m3_prompt_ids(vllm_ids: list[int], vllm_tokenizer: Any, tokenizer: Any, placeholder: int) -> list[int]:
    """`tokenizer_image_token` ids of the text vLLM's tokenizer encoded as `vllm_ids`, one `placeholder` per image.

    `vllm_ids` may start with vLLM's BOS; `tokenizer` is the checkpoint's own (`load_tokenizer`), which
    puts the BOS back where the original did.
    """
    if vllm_ids and vllm_ids[0] == vllm_tokenizer.bos_token_id:
        vllm_ids = vllm_ids[1:]
    return tokenizer_image_token(prompt_text(vllm_ids, vllm_tokenizer), tokenizer, image_token_index=placeholder)


def prompt_text(ids: list[int], tokenizer: Any) -> str:
    """The text `tokenizer` encoded (without special tokens added) as `ids`.

    Built stretch by stretch between special tokens, because `decode` alone is not the inverse for
    sentencepiece tokenizers: a stretch's leading "▁" is sometimes a space of the text and sometimes the
    dummy prefix the tokenizer added (at the start of the text; after every special token when it reads
    `legacy=True`), and the decoder cannot tell which. Each stretch is taken without the space, else with
    it, whichever encodes back to its ids after the special token before it. Where both do (transformers
    5 encodes "</s>USER" and "</s> USER" alike with `legacy=True`, and " text" and "text" alike at the start
    of a prompt), the text is taken without the space, as every conversation template writes it; a
    prompt that needs the space there must be sent as ids.
    """
    special = set(tokenizer.all_special_ids)
    pieces: list[str] = []
    context: list[int] = []
    for is_special, group in itertools.groupby(ids, key=special.__contains__):
        stretch = list(group)
        decoded = _decode(tokenizer, stretch)
        pieces.append(decoded if is_special else _stretch_text(tokenizer, context, stretch, decoded))
        context = stretch[-1:] if is_special else []
    return "".join(pieces)


def _stretch_text(tokenizer: Any, context: list[int], stretch: list[int], decoded: str) -> str:
    """`decoded`, or with the leading space the decoder dropped: whichever encodes to `stretch` after `context`."""
    before = _decode(tokenizer, context)
    for candidate in (decoded, " " + decoded):
        if _encode(tokenizer, before + candidate)[len(context) :] == stretch:
            return candidate
    return decoded


def _decode(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _encode(tokenizer: Any, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)
