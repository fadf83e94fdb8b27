"""`load_tokenizer`: the one way inference, training and serving open a checkpoint's tokenizer."""

from __future__ import annotations

from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase


def load_tokenizer(path_or_id: str, **kwargs: Any) -> PreTrainedTokenizerBase:
    """The tokenizer of a checkpoint folder or hub id; `kwargs` go to `AutoTokenizer.from_pretrained`."""
    return AutoTokenizer.from_pretrained(path_or_id, **kwargs)
