"""LLaVA conversation data for training: load, validate early, then tokenise and load images per step.

A record is `{"id", "image" (optional: a path or a list of paths), "conversations": [{"from":
"human"|"gpt", "value"}, ...]}`, one per list entry of a .json file or per line of a .jsonl file.
Building `LazySupervisedDataset` checks the file (UTF-8, valid JSON, not empty) and every record
before training starts, and raises `DataValidationError` listing each bad record's index, id and the
reason (missing or unreadable image file, `<image>` count not matching the images, empty or
non-alternating conversation); every image is opened and verified, not decoded. It also counts
each sample's tokens exactly, visual tokens at the largest training budget included, and truncates
or drops over-long samples (`--overlong_samples`).
"""

from __future__ import annotations

import json
import logging
import os
import struct
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from llava.constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.mm_utils import load_image, process_images
from llava.train.preprocess import (
    ASSISTANT_ROLES,
    HUMAN_ROLES,
    ConversationTemplate,
    TemplateMismatchError,
    preprocess,
    render_conversation,
)

logger = logging.getLogger(__name__)

MAX_REPORTED_ERRORS = 20
IMAGE_CHECK_THREADS = 16
TEMPLATE_CHECK_RECORDS = 64
Size = tuple[int, int]


class DataValidationError(ValueError):
    """One or more records cannot be trained on; the message lists `record <index>: <reason>`."""


def load_records(data_path: str | Path) -> list[Any]:
    """The records of a LLaVA .json list or a .jsonl file (one JSON object per line).

    A file that is not UTF-8 (a BOM is accepted), not valid JSON, or holds no records is a
    `DataValidationError` naming the file and the line and column.
    """
    path = Path(data_path)
    if not path.exists():
        raise FileNotFoundError(f"--data_path {path} does not exist")
    if not path.is_file():
        raise DataValidationError(f"--data_path {path} is not a file; give a .json list of records or a .jsonl file")
    text = _decode_utf8(path, path.read_bytes())
    records = _parse_jsonl(path, text) if path.suffix == ".jsonl" else _parse_json(path, text)
    if not records:
        layout = "one record per line" if path.suffix == ".jsonl" else "a JSON list of records"
        raise DataValidationError(f"{path}: holds no records; expected {layout}")
    return records


def _decode_utf8(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - data.rfind(b"\n", 0, e.start)
        raise DataValidationError(
            f"{path}: not UTF-8 text: byte 0x{data[e.start]:02x} at line {line}, column {column}; save the file as UTF-8"
        ) from e


def _parse_json(path: Path, text: str) -> list[Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.pos >= len(text.rstrip()):
            hint = "; the file ends in the middle of the data (cut off while being written or copied?)"
        elif e.msg == "Extra data":
            hint = "; it holds several JSON values: for JSON Lines (one record per line) name the file .jsonl"
        else:
            hint = ""
        raise DataValidationError(f"{path}: not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}{hint}") from e
    if not isinstance(data, list):
        raise DataValidationError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


def _parse_jsonl(path: Path, text: str) -> list[Any]:
    # Split on newlines only: JSON strings may hold other line separators (U+2028) unescaped.
    lines = text.split("\n")
    last = max((n for n, line in enumerate(lines, start=1) if line.strip()), default=0)
    records = []
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            hint = " (the last line: cut off while being written or copied?)" if line_number == last else ""
            raise DataValidationError(
                f"{path}: line {line_number} (record {len(records)}) is not valid JSON{hint}: {e}"
            ) from e
    return records


def record_images(record: dict[str, Any]) -> list[str]:
    """The record's image paths: none, one (a string) or several (a list)."""
    image = record.get("image")
    if image is None:
        return []
    return [image] if isinstance(image, str) else list(image)


def check_record(record: Any, image_folder: str | None, multimodal: bool) -> str | None:
    """Why the record cannot be trained on, or None. Cheap: no image is opened, nothing is tokenised."""
    if not isinstance(record, dict):
        return f"is a {type(record).__name__}, not an object"
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        return "has no conversations (empty or missing 'conversations')"
    for j, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            return f"turn {j} is not an object with a string 'value'"
        role = turn.get("from")
        expected = HUMAN_ROLES if j % 2 == 0 else ASSISTANT_ROLES
        if role not in HUMAN_ROLES + ASSISTANT_ROLES:
            return f"turn {j} has unknown role {role!r}; use 'human' or 'gpt'"
        if role not in expected:
            return (
                f"turn {j} is from {role!r} but a {expected[0]!r} turn was expected (turns alternate human, gpt, ...)"
            )
        if not turn["value"].strip():
            return f"turn {j} ({role}) is empty"
        if role in ASSISTANT_ROLES and DEFAULT_IMAGE_TOKEN in turn["value"]:
            return f"turn {j} ({role}) contains {DEFAULT_IMAGE_TOKEN}; images belong in human turns"
    if len(turns) % 2:
        return "ends with a human turn that has no gpt answer"
    images = record.get("image")
    if images is not None and not (
        isinstance(images, str) or (isinstance(images, list) and all(isinstance(i, str) for i in images))
    ):
        return "'image' must be a path or a list of paths"
    images = record_images(record)
    placeholders = sum(turn["value"].count(DEFAULT_IMAGE_TOKEN) for turn in turns)
    if placeholders != len(images):
        return (
            f"has {placeholders} {DEFAULT_IMAGE_TOKEN} placeholder(s) but {len(images)} image(s); "
            f"put one {DEFAULT_IMAGE_TOKEN} in a human turn per image"
        )
    if images and not multimodal:
        return "has images but the model has no vision tower (pass --vision_tower)"
    for image in images:
        path = os.path.join(image_folder, image) if image_folder else image
        if not os.path.isfile(path):
            return f"image file not found: {path}"
    return None


def inspect_image(path: str) -> tuple[Size | None, str | None]:
    """(width, height) of the image at `path`, or why it is not a readable image.

    Opens the file and verifies its structure (PIL `verify`: headers, and chunk checksums for PNG)
    without decoding pixels, so a non-image or a damaged header is found before training; damage
    inside the compressed pixel data of a JPEG shows only when the image is decoded.
    """
    try:
        with Image.open(path) as image:
            size = image.size
            image.verify()
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError) as e:
        return None, f"{path} is not a readable image ({type(e).__name__}: {e})"
    return size, None


@dataclass(frozen=True)
class VisualTokenBudget:
    """How many visual tokens an image costs at the largest training budget: `tokens(image_size)`.

    Built from the model (`LlavaMetaForCausalLM.num_visual_tokens`), so the count is what the
    splice will really insert; for anyres models it depends on the image's (width, height).
    """

    tokens: Callable[[Size | None], int]
    depends_on_size: bool

    @classmethod
    def from_model(cls, model: Any) -> VisualTokenBudget:
        config = model.config
        scales = config.matryoshka_train_scales or [model.default_scale]
        largest = max(scales)
        if config.is_anyres:
            return cls(lambda size: model.num_visual_tokens(largest, size), True)
        per_image = model.num_visual_tokens(largest)
        return cls(lambda size: per_image, False)


def expanded_length(input_ids: Sequence[int], image_tokens: Sequence[int]) -> int:
    """Sequence length once each `IMAGE_TOKEN_INDEX` is replaced by its image's visual tokens."""
    return len(input_ids) - len(image_tokens) + sum(image_tokens)


def truncate_sample(
    input_ids: list[int], labels: list[int], image_tokens: Sequence[int], max_length: int
) -> tuple[list[int], list[int]] | None:
    """Cut the sample to `max_length` positions (visual tokens counted), or None when that cannot work.

    It cannot when the cut would fall inside or before an image, or leave no supervised token.
    """
    widths = []
    image_iter = iter(image_tokens)
    for token in input_ids:
        widths.append(next(image_iter) if token == IMAGE_TOKEN_INDEX else 1)
    total, keep = 0, 0
    for width in widths:
        if total + width > max_length:
            break
        total += width
        keep += 1
    if IMAGE_TOKEN_INDEX in input_ids[keep:] or all(label == IGNORE_INDEX for label in labels[:keep]):
        return None
    return input_ids[:keep], labels[:keep]


class LazySupervisedDataset(Dataset):
    """Validated records; `__getitem__` tokenises the conversation and loads and processes the images.

    Args:
        data_path: .json or .jsonl LLaVA conversation records.
        image_folder: folder the records' image paths are relative to (None: paths as given).
        tokenizer: the model's tokenizer.
        template: the conversation template the prompts are laid out with.
        image_processor: the vision tower's image processor (None for a text-only model).
        image_config: object with `image_aspect_ratio` / `image_grid_pinpoints` (the model config).
        visual_budget: visual tokens per image at the largest budget (None for a text-only model).
        max_length: the longest sample, visual tokens included (`--model_max_length`).
        overlong: "truncate" or "drop" samples longer than `max_length`.
    """

    def __init__(
        self,
        data_path: str | Path,
        image_folder: str | None,
        tokenizer: Any,
        template: ConversationTemplate,
        image_processor: Any,
        image_config: Any,
        visual_budget: VisualTokenBudget | None,
        max_length: int,
        overlong: str = "truncate",
    ) -> None:
        if overlong not in ("truncate", "drop"):
            raise ValueError(f"overlong must be 'truncate' or 'drop', got {overlong!r}")
        self.data_path = str(data_path)
        self.image_folder = image_folder
        self.tokenizer = tokenizer
        self.template = template
        self.image_processor = image_processor
        self.image_config = image_config
        self.visual_budget = visual_budget
        self.max_length = max_length
        records = load_records(data_path)
        self._validate(records)
        self._count_tokens(records, overlong)
        # Tokenising turn by turn is too slow to do for every record up front; a template that does not
        # fit the tokenizer fails on the first records already, so those are checked now.
        for index in self.indices[:TEMPLATE_CHECK_RECORDS]:
            self._load_tokens(index, records)

    # -- construction ------------------------------------------------------------------------

    def _validate(self, records: list[Any]) -> None:
        """Every record's fields, then every image's header (opened and verified, not decoded)."""
        multimodal = self.visual_budget is not None
        reasons = {}
        for index, record in enumerate(records):
            reason = check_record(record, self.image_folder, multimodal)
            if reason is not None:
                reasons[index] = reason
        unreadable = self._inspect_images([r for i, r in enumerate(records) if i not in reasons])
        for index, record in enumerate(records):
            if index in reasons:
                continue
            problems = [unreadable[path] for path in map(self._image_path, record_images(record)) if path in unreadable]
            if problems:
                reasons[index] = problems[0]
        if reasons:
            errors = [f"record {i} (id={_record_id(records[i])!r}): {reasons[i]}" for i in sorted(reasons)]
            shown = "\n  ".join(errors[:MAX_REPORTED_ERRORS])
            more = f"\n  ... and {len(errors) - MAX_REPORTED_ERRORS} more" if len(errors) > MAX_REPORTED_ERRORS else ""
            raise DataValidationError(f"{self.data_path}: {len(errors)} bad record(s):\n  {shown}{more}")
        self.records = records

    def _inspect_images(self, records: list[dict[str, Any]]) -> dict[str, str]:
        """Open every image of `records` once (threads: the time goes to file reads); keeps their sizes.

        Returns {path: why it cannot be read} for the unreadable ones.
        """
        paths = sorted({self._image_path(file) for record in records for file in record_images(record)})
        with ThreadPoolExecutor(IMAGE_CHECK_THREADS) as pool:
            results = list(pool.map(inspect_image, paths))
        self.image_sizes = {path: size for path, (size, _) in zip(paths, results) if size is not None}
        return {path: problem for path, (_, problem) in zip(paths, results) if problem is not None}

    def _count_tokens(self, records: list[dict[str, Any]], overlong: str) -> None:
        """Exact sample lengths (one batched tokenisation), then the over-long policy."""
        prompts = [render_conversation(r["conversations"], self.template, len(record_images(r))).text for r in records]
        text_lengths = count_prompt_tokens(prompts, self.tokenizer)
        self.image_tokens = [self._image_tokens(r) for r in records]
        lengths = [t + sum(v) for t, v in zip(text_lengths, self.image_tokens)]
        keep, truncated, dropped = [], [], []
        for index, length in enumerate(lengths):
            if length <= self.max_length:
                keep.append(index)
            elif overlong == "truncate" and self._load_tokens(index, records) is not None:
                keep.append(index)
                truncated.append(index)
                lengths[index] = self.max_length
            else:
                dropped.append(index)
        if truncated:
            logger.warning(
                "%s: %d sample(s) longer than model_max_length=%d (visual tokens included) are truncated: records %s",
                self.data_path,
                len(truncated),
                self.max_length,
                _preview(truncated),
            )
        if dropped:
            logger.warning(
                "%s: %d sample(s) longer than model_max_length=%d (visual tokens included) are dropped%s: records %s",
                self.data_path,
                len(dropped),
                self.max_length,
                "" if overlong == "drop" else " (truncating would cut an image or every answer)",
                _preview(dropped),
            )
        with_images = [i for i, tokens in enumerate(self.image_tokens) if tokens]
        if not keep or (with_images and not any(self.image_tokens[i] for i in keep)):
            what = "record" if not keep else "record with an image"
            shortest = min(lengths[i] for i in (with_images or range(len(lengths))))
            raise DataValidationError(
                f"{self.data_path}: no {what} fits model_max_length={self.max_length} (visual tokens at the largest "
                f"training budget included; the shortest needs {shortest}): raise --model_max_length"
            )
        self.indices = keep
        self.records = records
        self.lengths = [lengths[i] for i in keep]
        self.dropped = dropped
        self.truncated = truncated

    def _image_tokens(self, record: dict[str, Any]) -> list[int]:
        if self.visual_budget is None:
            return []
        files = record_images(record)
        if not self.visual_budget.depends_on_size:
            return [self.visual_budget.tokens(None) for _ in files]
        return [self.visual_budget.tokens(self.image_sizes[self._image_path(file)]) for file in files]

    def _image_path(self, file: str) -> str:
        return os.path.join(self.image_folder, file) if self.image_folder else file

    def _load_tokens(self, index: int, records: list[dict[str, Any]]) -> tuple[list[int], list[int]] | None:
        """Token ids and labels of record `index`, truncated to fit; None if it cannot be made to fit."""
        record = records[index]
        try:
            input_ids, labels = preprocess(
                record["conversations"], self.template, self.tokenizer, len(record_images(record))
            )
        except TemplateMismatchError as e:
            raise TemplateMismatchError(f"{self.data_path}: record {index} (id={_record_id(record)!r}): {e}") from e
        if expanded_length(input_ids, self.image_tokens[index]) <= self.max_length:
            return input_ids, labels
        return truncate_sample(input_ids, labels, self.image_tokens[index], self.max_length)

    # -- access ------------------------------------------------------------------------------

    @property
    def modality_lengths(self) -> list[int]:
        """Sample lengths, negative for text-only samples (for `--group_by_modality_length`)."""
        return [length if record_images(self.records[i]) else -length for i, length in zip(self.indices, self.lengths)]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        index = self.indices[i]
        record = self.records[index]
        tokens = self._load_tokens(index, self.records)
        if tokens is None:  # validation kept only samples that fit
            raise RuntimeError(f"{self.data_path}: record {index} no longer fits model_max_length")
        input_ids, labels = tokens
        sample: dict[str, Any] = {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
        }
        files = record_images(record)
        if files:
            try:
                images = [load_image(self._image_path(f)) for f in files]
            except (ValueError, FileNotFoundError) as e:  # verified at the start: damaged pixel data, or changed since
                raise DataValidationError(f"{self.data_path}: record {index} (id={_record_id(record)!r}): {e}") from e
            pixels = process_images(images, self.image_processor, self.image_config)
            sample["images"] = list(pixels)
            sample["image_sizes"] = [image.size for image in images]
        return sample


def count_prompt_tokens(prompts: Sequence[str], tokenizer: Any) -> list[int]:
    """Text tokens of each prompt as `tokenizer_image_token` makes them, placeholders excluded.

    All text chunks (split at `<image>`) are tokenised in one batched call; a BOS the tokenizer puts
    at the start of every chunk is counted once, as `tokenizer_image_token` keeps it.
    """
    chunks = [prompt.split(DEFAULT_IMAGE_TOKEN) for prompt in prompts]
    flat = [chunk for prompt_chunks in chunks for chunk in prompt_chunks]
    encoded = tokenizer(flat).input_ids if flat else []
    counts, position = [], 0
    for prompt_chunks in chunks:
        ids = encoded[position : position + len(prompt_chunks)]
        position += len(prompt_chunks)
        has_bos = bool(ids[0]) and ids[0][0] == tokenizer.bos_token_id
        counts.append(sum(len(c) for c in ids) - (len(ids) - 1 if has_bos else 0))
    return counts


def _record_id(record: Any) -> Any:
    return record.get("id") if isinstance(record, dict) else None


def _preview(indices: list[int], limit: int = 10) -> str:
    shown = ", ".join(str(i) for i in indices[:limit])
    return shown + (f", ... ({len(indices)} in all)" if len(indices) > limit else "")


@dataclass
class DataCollatorForSupervisedDataset:
    """Pads a list of samples into a batch: ids/labels right-padded, images flattened in sample order.

    `images` is (N, 3, H, W) for pad/square images, (N, crops, 3, H, W) for anyres images with the
    same crop count, else a list; absent when no sample in the batch has an image.
    """

    pad_token_id: int

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        longest = max(len(s["input_ids"]) for s in samples)
        input_ids = torch.full((len(samples), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(samples), longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(samples), longest), dtype=torch.long)
        for row, sample in enumerate(samples):
            n = len(sample["input_ids"])
            input_ids[row, :n] = sample["input_ids"]
            labels[row, :n] = sample["labels"]
            attention_mask[row, :n] = 1  # from lengths: the pad id may also be a real token (unk)
        batch: dict[str, Any] = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
        images = [image for s in samples for image in s.get("images", [])]
        if images:
            same_shape = all(image.shape == images[0].shape for image in images)
            batch["images"] = torch.stack(images) if same_shape else images
            batch["image_sizes"] = [size for s in samples for size in s.get("image_sizes", [])]
        return batch
