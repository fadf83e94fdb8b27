"""`load_tokenizer`: the one way inference, training and serving open a checkpoint's tokenizer.

The released LLaVA/M3 checkpoints were trained with transformers 4 and its slow `LlamaTokenizer`, which
runs the checkpoint's sentencepiece model. transformers 5 opens the same files with a `tokenizers`
pipeline that gives other ids in two ways, both properties of the tokenizer rather than of the prompt
code (they show on a single call such as `tokenizer("eos</s> text")` or `tokenizer(" text")`):

1. A `tokenizer_config.json` without a `legacy` key meant `legacy=True` to transformers 4 and means
   `legacy=False` to transformers 5. With `legacy=True` every stretch of text between special tokens gets
   sentencepiece's dummy prefix "▁" ("</s>USER" -> "</s>", "▁USER"); with `legacy=False` only the start of
   the text does ("</s>", "USER"). Multi-turn prompts of `v1`, `llava_llama_2` and `mistral_instruct`, and
   the labels built from them, depend on it.
2. sentencepiece adds the dummy prefix even when the text already starts with a space (" text" ->
   "▁▁text"); transformers 5's `Metaspace` pre-tokenizer then adds none ("▁text"). `tokenizer_image_token`
   tokenises each chunk between `<image>` markers on its own, so "<image> text" meets this on every image.

`SentencePieceLlamaTokenizer` is transformers 5's (fast) `LlamaTokenizer` with both restored; the
parity test (tests/test_tokenization_parity.py) holds it to ids recorded from the original code on
transformers 4.36.2. Tokenizers that are not sentencepiece Llama ones (byte-level BPE, Qwen2, ...) load
through `AutoTokenizer` unchanged.
"""

from __future__ import annotations

import json
import os
from typing import Any

from tokenizers import normalizers
from transformers import AutoTokenizer, LlamaTokenizer, PreTrainedTokenizerBase
from transformers.models.auto.tokenization_auto import get_tokenizer_config
from transformers.utils.hub import has_file

SPIECE_UNDERLINE = "▁"
SENTENCEPIECE_MODEL = "tokenizer.model"
# What transformers 4 read a config without a "legacy" key as; the released checkpoints were trained so.
TRANSFORMERS4_LEGACY_DEFAULT = True
# Keyword arguments of from_pretrained that say where the files are, forwarded to the file look-ups.
_HUB_KWARGS = ("cache_dir", "revision", "token", "local_files_only", "proxies")


class SentencePieceLlamaTokenizer(LlamaTokenizer):
    """transformers' `LlamaTokenizer` that splits text as the sentencepiece model does in transformers 4.

    `legacy=None` (no key in the config) means `True`, as in transformers 4. Saved, it is an ordinary
    `LlamaTokenizer` checkpoint (tokenizer.json, and tokenizer.model for transformers 4 and the original
    code) with `legacy` written out, so no loader has to guess it.
    """

    def __init__(self, *args: Any, legacy: bool | None = None, **kwargs: Any) -> None:
        super().__init__(*args, legacy=TRANSFORMERS4_LEGACY_DEFAULT if legacy is None else legacy, **kwargs)
        # As LlamaTokenizer reads it: unset (None) means sentencepiece's dummy prefix is on.
        self.dummy_prefix = kwargs.get("add_prefix_space") is not False
        if self.legacy:
            # sentencepiece encodes each stretch between special tokens on its own, dummy prefix included;
            # a normalizer runs per stretch and, unlike Metaspace, prepends even before a leading space.
            steps = [normalizers.Prepend(SPIECE_UNDERLINE)] if self.dummy_prefix else []
            self.backend_tokenizer.normalizer = normalizers.Sequence(
                [*steps, normalizers.Replace(" ", SPIECE_UNDERLINE)]
            )
            self.backend_tokenizer.pre_tokenizer = None

    def _encode_plus(self, text: Any, text_pair: Any = None, is_split_into_words: bool = False, **kwargs: Any) -> Any:
        """Every encoding path (`__call__`, `encode`, `tokenize`) passes here; see `_with_dummy_prefix`."""
        if not self.legacy and self.dummy_prefix and not is_split_into_words:
            text = _with_dummy_prefix(text)
            text_pair = _with_dummy_prefix(text_pair)
        return super()._encode_plus(text, text_pair=text_pair, is_split_into_words=is_split_into_words, **kwargs)

    def _save_pretrained(
        self,
        save_directory: str | os.PathLike,
        file_names: tuple[str, ...],
        legacy_format: bool | None = None,
        filename_prefix: str | None = None,
    ) -> tuple[str, ...]:
        """Write the files of a stock `LlamaTokenizer`, with `legacy` explicit, plus the sentencepiece model."""
        file_names = super()._save_pretrained(save_directory, file_names, legacy_format, filename_prefix)
        for name in file_names:
            if os.path.basename(name).endswith("tokenizer_config.json"):
                with open(name, encoding="utf-8") as f:
                    config = json.load(f)
                config.update(tokenizer_class="LlamaTokenizer", legacy=self.legacy)
                with open(name, "w", encoding="utf-8") as f:
                    f.write(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        if self.can_save_slow_tokenizer:
            file_names += self.save_vocabulary(str(save_directory), filename_prefix)
        return file_names


def _with_dummy_prefix(text: Any) -> Any:
    """Double a leading space: what `legacy=False` sentencepiece sees after its own "▁" is prepended.

    transformers 5 (prepend scheme "first") turns " text" into "▁text", sentencepiece into "▁▁text"; "  text"
    reaches "▁▁text" through Metaspace. A literal leading "▁" counts as a space, as transformers 4 replaced
    it by one before encoding. Text starting with a special token is unaffected in both.
    """
    if isinstance(text, str):
        return " " + text if text.startswith((" ", SPIECE_UNDERLINE)) else text
    if isinstance(text, (list, tuple)):  # a batch, or (text, pair) tuples in one
        return type(text)(_with_dummy_prefix(t) for t in text)
    return text


def load_tokenizer(path_or_id: str, **kwargs: Any) -> PreTrainedTokenizerBase:
    """The tokenizer of a checkpoint folder or hub id, giving the ids the checkpoint was trained with.

    A sentencepiece Llama tokenizer (`tokenizer_class` LlamaTokenizer and a `tokenizer.model`: LLaVA-1.5,
    LLaVA-NeXT Vicuna/Mistral, M3) opens as `SentencePieceLlamaTokenizer`; anything else through
    `AutoTokenizer`. `kwargs` go to `from_pretrained` (`legacy=` given here overrides the config).
    """
    if _is_sentencepiece_llama(path_or_id, kwargs):
        return SentencePieceLlamaTokenizer.from_pretrained(path_or_id, **kwargs)
    return AutoTokenizer.from_pretrained(path_or_id, **kwargs)


def _is_sentencepiece_llama(path_or_id: str, kwargs: dict[str, Any]) -> bool:
    hub = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}
    config = get_tokenizer_config(path_or_id, **hub)
    tokenizer_class = (config.get("tokenizer_class") or "").removesuffix("Fast")
    return tokenizer_class == "LlamaTokenizer" and has_file(path_or_id, SENTENCEPIECE_MODEL, **hub)
