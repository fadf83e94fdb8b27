"""The evaluation harness: benchmark questions → LLaVA answers files, at one or several visual-token scales.

Every `llava.eval.model_vqa*` command is this harness plus the benchmark's prompt building: the
benchmark turns its question file into `Sample`s (one image, or none, and the `Query`s asked
about it) and the harness does the rest, once for all benchmarks:

- chunking (`--num-chunks N --chunk-idx i`): contiguous, near-equal slices of the samples, so N
  processes (one per GPU) answer disjoint parts that concatenate back into the question order;
- batching (`--batch-size`): images are loaded and preprocessed in a torch DataLoader
  (`--num-workers`), encoded together, and up to batch-size prompts go into one left-padded
  `generate` call;
- several scales in one pass (`--matryoshka_vis_token_scale 1,9,36,144,576`): each image goes
  through the vision tower and projector once; every scale then pools that one encoding;
- the adaptive budget (`auto`, alone or beside fixed scales: `auto,1,9,36,144,576`): the checkpoint's
  calibrated `ScalePolicy` answers each question at the first rung it is sure of (`llava.adaptive`),
  from the same one encoding;
- answers files: one per scale. With a single scale (or none: the checkpoint's default) the file
  is `--answers-file` itself, as in LLaVA; with several, the scale is put before the suffix:
  `answers.jsonl` → `answers_s576.jsonl`, `answers_s144.jsonl`, ..., `answers_sauto.jsonl`
  (`scale_answers_file`);
- resume: a stopped run is restarted with the same command. Questions already in an answers file
  are skipped (an image whose questions are answered at every scale is not even loaded) and new
  answers are appended; a last line cut off mid-write is dropped. When every question of the
  chunk is answered, the file is put back into question order (POPE pairs answers with labels by
  order). `--overwrite` starts the files afresh instead;
- a progress bar over images, and errors that name the question file and line.

Answer lines are LLaVA's: `{"question_id", "prompt", "text", "answer_id", "model_id", "metadata":
{"matryoshka_vis_token_scale": s, ...}}` plus what the benchmark adds (MMBench: `round_idx`, ...). The
metadata also says what the answer cost and how sure the model was (`answer_metadata`): the budget
used, the visual tokens of that budget and over every rung tried, p_first, and the wall time.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO, TypeVar

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from llava.adaptive import AdaptiveAnswer, ScaleAnswers, answer_adaptive, answer_at_scale, resolve_budget
from llava.eval.scoring.common import ScoringError, read_jsonl
from llava.generation import Generator, PromptBatch, SamplingParams, add_scale_argument, default_device
from llava.mm_utils import get_model_name_from_path, load_image, load_image_from_base64, process_images
from llava.model.builder import load_pretrained_model
from llava.model.cpu_packing import prepare_for_inference
from llava.model.llava_arch import EncodedImages
from llava.scale_policy import AUTO, AutoScale, ScalePolicy

logger = logging.getLogger(__name__)

T = TypeVar("T")
AnswerKey = tuple[str, int | None, str | None]
"""(question id as a string, round index or None, prompt): what one answers-file line answers.

The prompt is part of it because some LLaVA question files reuse an id for several questions
(MME's id is the image path, shared by its two questions; TextVQA's is the image id)."""

ANSWER_PROMPTER_MAX_NEW_TOKENS = 64

Budget = int | ScalePolicy
"""What one answers file is answered at: a fixed scale, or the checkpoint's policy (`auto`)."""
Label = int | str
"""How a budget is named in file names and answer lines: the scale, or "auto"."""


class HarnessError(ScoringError):
    """Bad input to an answer-generation run; the message names the file and line."""


@dataclass(frozen=True)
class Query:
    """One prompt about a sample's image and the fields its answer line carries.

    `text` is the user turn without the image marker (the harness adds it when the sample has an
    image and lays the turn out with the run's template), or, with `raw`, the whole prompt as a
    benchmark fixes it (IG-VLM's video prompts), only its `<image>` marker formatted for the
    checkpoint. `fields` go into the answer line before `text`: at least `prompt`, the question as
    the scorers read it. `followup`, when set, asks a second time: the prompt plus the first answer
    plus `followup` (LLaVA's ScienceQA answer prompter).
    """

    question_id: Any
    text: str
    fields: dict[str, Any]
    round_idx: int | None = None
    followup: str | None = None
    raw: bool = False

    @property
    def key(self) -> AnswerKey:
        return (str(self.question_id), self.round_idx, self.fields.get("prompt"))


@dataclass(frozen=True)
class Sample:
    """One image (a file or base64 data, or none) and the queries asked about it."""

    source: str
    """Where it was read, for errors: "questions.jsonl:12"."""
    queries: list[Query]
    image_file: str | None = None
    image_base64: str | None = field(default=None, repr=False)

    def load_image(self) -> Image.Image | None:
        try:
            if self.image_file is not None:
                return load_image(self.image_file)
            if self.image_base64 is not None:
                return load_image_from_base64(self.image_base64).convert("RGB")
        except (OSError, ValueError) as e:  # missing or unreadable file, bad base64
            raise HarnessError(f"{self.source}: {e}") from None
        return None


# -- chunks, file names, resume ------------------------------------------------------------------


def get_chunk(items: Sequence[T], num_chunks: int, chunk_idx: int) -> list[T]:
    """Slice `chunk_idx` of `num_chunks` contiguous slices whose sizes differ by at most one."""
    if num_chunks < 1 or not 0 <= chunk_idx < num_chunks:
        raise HarnessError(f"--chunk-idx {chunk_idx} is not in 0..{num_chunks - 1} (--num-chunks {num_chunks})")
    start = len(items) * chunk_idx // num_chunks
    end = len(items) * (chunk_idx + 1) // num_chunks
    return list(items[start:end])


def scale_answers_file(answers_file: str | Path, scale: Label | None, several: bool) -> Path:
    """The answers file of one scale: `answers_file` itself, or with `_s<scale>` before the suffix
    when a run writes several scales (`answers.jsonl` → `answers_s36.jsonl`, `answers_sauto.jsonl`)."""
    path = Path(answers_file)
    if not several:
        return path
    return path.with_name(f"{path.stem}_s{scale}{path.suffix}")


def answer_key(record: dict[str, Any]) -> AnswerKey:
    round_idx = record.get("round_idx", record.get("round_id"))
    return (str(record["question_id"]), round_idx, record.get("prompt"))


def read_answered(path: Path, scale: Label) -> set[AnswerKey]:
    """Keys already answered in `path`; a final line cut off mid-write is removed from the file."""
    if not path.exists():
        return set()
    _mend_last_line(path)
    try:
        rows = read_jsonl(path, HarnessError)
    except HarnessError as e:
        raise HarnessError(f"{e}; fix it, delete the file or pass --overwrite") from None
    done: set[AnswerKey] = set()
    for number, record in rows:
        if "question_id" not in record:
            raise HarnessError(f"{path}:{number}: not an answer line (no question_id); delete it or pass --overwrite")
        written_at = (record.get("metadata") or {}).get("matryoshka_vis_token_scale")
        if written_at is not None and written_at != scale:
            raise HarnessError(
                f"{path}:{number}: answered at matryoshka_vis_token_scale={written_at}, but this run writes scale "
                f"{scale} to this file; use another --answers-file or pass --overwrite"
            )
        done.add(answer_key(record))
    return done


def _mend_last_line(path: Path) -> None:
    """A last line without its newline was being written when the run stopped: drop it if it is cut off,
    else end it, so the next answer starts a line of its own."""
    data = path.read_bytes()
    last = data.split(b"\n")[-1]
    if not last.strip():
        return
    try:
        json.loads(last)
    except json.JSONDecodeError:
        logger.warning("%s: dropping the incomplete last line (the previous run stopped while writing it)", path)
        path.write_bytes(data[: len(data) - len(last)])
    else:
        with open(path, "ab") as f:
            f.write(b"\n")


def reorder_answers(path: Path, order: Sequence[AnswerKey]) -> None:
    """Rewrite `path` with its lines in `order` (lines for other keys keep their place at the end)."""
    records = [record for _, record in read_jsonl(path, HarnessError)]
    rank = {key: i for i, key in enumerate(order)}
    keyed = sorted(enumerate(records), key=lambda item: (rank.get(answer_key(item[1]), len(rank)), item[0]))
    if [i for i, _ in keyed] == list(range(len(records))):
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for _, r in keyed), encoding="utf-8")
    os.replace(tmp, path)


def check_unique(samples: Sequence[Sample]) -> None:
    seen: dict[AnswerKey, str] = {}
    for sample in samples:
        for query in sample.queries:
            if query.key in seen:
                what = f"question_id {query.key[0]!r}" + ("" if query.key[1] is None else f" round {query.key[1]}")
                raise HarnessError(f"{sample.source}: {what} with the same prompt already appears at {seen[query.key]}")
            seen[query.key] = sample.source


# -- data loading --------------------------------------------------------------------------------


@dataclass
class PreparedSample:
    """A sample with its image's pixels, as the DataLoader yields it."""

    sample: Sample
    pixels: torch.Tensor | None
    """(3, H, W), or (1 + crops, 3, H, W) for anyres."""
    image_size: tuple[int, int] | None


class SampleDataset(Dataset):
    """Loads and preprocesses each sample's image (in loader workers: it holds no model)."""

    def __init__(self, samples: Sequence[Sample], image_processor: Any, model_config: Any):
        self.samples = samples
        self.image_processor = image_processor
        self.model_config = model_config

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> PreparedSample:
        sample = self.samples[index]
        image = sample.load_image()
        if image is None:
            return PreparedSample(sample, None, None)
        return PreparedSample(sample, process_images([image], self.image_processor, self.model_config)[0], image.size)


def _keep_list(batch: list[PreparedSample]) -> list[PreparedSample]:
    return batch


def _batched(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- the run -------------------------------------------------------------------------------------


def load_model(
    model_path: str, model_base: str | None, device: str, dtype: str | None = None, conv_mode: str | None = None
) -> Generator:
    """The checkpoint through `load_pretrained_model`; `dtype` None keeps its default (fp16 on GPUs, fp32 on CPU),
    `conv_mode` None the checkpoint's template."""
    name = get_model_name_from_path(model_path)
    kwargs = {"dtype": dtype} if dtype is not None else {}
    tokenizer, model, image_processor, _ = load_pretrained_model(model_path, model_base, name, device=device, **kwargs)
    prepare_for_inference(model)
    return Generator(tokenizer, model, image_processor, name, conv_mode)


Answered = tuple[str, dict[str, Any]]
"""An answer's text and its line's metadata."""


def answer_metadata(result: ScaleAnswers | AdaptiveAnswer, row: int = 0) -> dict[str, Any]:
    """What an answer line's metadata says about row `row` of a fixed-scale result, or an adaptive answer:
    the budget used, its visual tokens and those of every rung tried, p_first (per rung for `auto`)."""
    if isinstance(result, AdaptiveAnswer):
        return result.metadata()
    tokens = result.visual_tokens[row]
    return {"p_first": round(result.p_first[row], 6), "visual_tokens": tokens, "visual_tokens_processed": tokens}


class AnswerWriter:
    """Appends answer lines to one file per scale, flushed line by line so a stop loses at most one."""

    def __init__(self, paths: dict[Label, Path], model_id: str):
        self.paths = paths
        self.model_id = model_id
        self.files: dict[Label, TextIO] = {}
        for scale, path in paths.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            self.files[scale] = open(path, "a", encoding="utf-8")

    def write(self, scale: Label, query: Query, text: str, metadata: dict[str, Any] | None = None) -> None:
        line = {
            "question_id": query.question_id,
            **query.fields,
            "text": text,
            "answer_id": uuid.uuid4().hex,
            "model_id": self.model_id,
            "metadata": {"matryoshka_vis_token_scale": scale, **(metadata or {})},
        }
        file = self.files[scale]
        file.write(json.dumps(line, ensure_ascii=False) + "\n")
        file.flush()

    def close(self) -> None:
        for file in self.files.values():
            file.close()


@dataclass
class _Encoded:
    """One loader batch's images after one tower pass, and which sample owns which image."""

    batch: Sequence[PreparedSample]
    images: EncodedImages | None
    image_of: dict[int, int]
    seconds_per_query: float
    """The tower pass's wall time shared out over the batch's queries (every budget would pay it alone)."""

    def prompt_batch(
        self, generator: Generator, chunk: Sequence[tuple[int, int]], prompts: Sequence[str]
    ) -> PromptBatch:
        images = [self.image_of[i] for i, _ in chunk if i in self.image_of]
        selected = self.images.select(images) if images else None
        sizes = [self.batch[i].image_size for i, _ in chunk if i in self.image_of]
        return PromptBatch([generator.tokenize(prompt) for prompt in prompts], selected, sizes)


class Answerer:
    """Answers batches of prepared samples at every budget from one encoding of their images."""

    def __init__(self, generator: Generator, params: SamplingParams, batch_size: int):
        self.generator = generator
        self.params = params
        self.batch_size = batch_size

    def answer(
        self,
        batch: Sequence[PreparedSample],
        pending: dict[Label, set[AnswerKey]],
        budgets: dict[Label, Budget],
        write: Callable[[Label, Query, str, dict[str, Any]], None],
    ) -> None:
        start = time.perf_counter()
        with_image = [i for i, p in enumerate(batch) if p.pixels is not None]
        images = self.generator.encode([batch[i].pixels for i in with_image])
        num_queries = sum(len(p.sample.queries) for p in batch)
        encoded = _Encoded(batch, images, {s: k for k, s in enumerate(with_image)}, 0.0)
        encoded.seconds_per_query = (time.perf_counter() - start) / max(num_queries, 1)
        prompts = {
            (i, j): q.text if q.raw else self.generator.prompt(q.text, int(i in encoded.image_of))
            for i, p in enumerate(batch)
            for j, q in enumerate(p.sample.queries)
        }
        for label, keys in pending.items():
            todo = [(i, j) for i, j in prompts if batch[i].sample.queries[j].key in keys]
            for chunk in _batched(todo, self.batch_size):
                asked = [prompts[ij] for ij in chunk]
                answered = self._generate(encoded, chunk, asked, budgets[label], self.params)
                self._follow_up(encoded, chunk, asked, answered, budgets[label])
                for (i, j), (text, metadata) in zip(chunk, answered):
                    metadata["seconds"] = round(metadata["seconds"] + encoded.seconds_per_query, 6)
                    write(label, batch[i].sample.queries[j], text, metadata)

    def _generate(
        self,
        encoded: _Encoded,
        chunk: Sequence[tuple[int, int]],
        prompts: Sequence[str],
        budget: Budget,
        params: SamplingParams,
    ) -> list[Answered]:
        """Answer one chunk at a budget; each answer's metadata holds its share of the call's wall time."""
        prompt_batch = encoded.prompt_batch(self.generator, chunk, prompts)
        start = time.perf_counter()
        if isinstance(budget, ScalePolicy):
            results: list[ScaleAnswers | AdaptiveAnswer] = answer_adaptive(self.generator, prompt_batch, budget, params)
            texts = [result.text for result in results]
        else:
            result = answer_at_scale(self.generator, prompt_batch, budget, params)
            results, texts = [result] * len(chunk), result.texts
        share = (time.perf_counter() - start) / len(chunk)
        return [
            (text, {**answer_metadata(result, row), "seconds": share})
            for row, (text, result) in enumerate(zip(texts, results))
        ]

    def _follow_up(
        self,
        encoded: _Encoded,
        chunk: Sequence[tuple[int, int]],
        prompts: Sequence[str],
        answered: list[Answered],
        budget: Budget,
    ) -> None:
        """LLaVA's answer prompter: ask again after the reasoning, at the budget that gave it; `answered[k]`'s text
        becomes "<reasoning>\n The answer is <answer>"."""
        queries = [encoded.batch[i].sample.queries[j] for i, j in chunk]
        second = [k for k, query in enumerate(queries) if query.followup]
        params = replace(self.params, max_new_tokens=ANSWER_PROMPTER_MAX_NEW_TOKENS)
        by_scale: dict[int, list[int]] = {}
        for k in second:
            scale = answered[k][1]["scale_used"] if isinstance(budget, ScalePolicy) else budget
            by_scale.setdefault(scale, []).append(k)
        for scale, rows in by_scale.items():
            again = [prompts[k] + answered[k][0] + queries[k].followup for k in rows]
            answers = self._generate(encoded, [chunk[k] for k in rows], again, scale, params)
            for k, (answer, extra) in zip(rows, answers):
                text, metadata = answered[k]
                metadata["seconds"] += extra["seconds"]
                answered[k] = (f"{text}\n The answer is {answer}", metadata)


def run_budgets(model: Any, flag: list[int | AutoScale] | None, model_path: str) -> dict[Label, Budget]:
    """The run's budgets from the parsed `--matryoshka_vis_token_scale` (None: the checkpoint's default),
    each scale checked by the model's resolver and `auto` resolved to the checkpoint's policy: {label: budget}."""
    if flag is None:
        scale = model.resolve_scale(None)
        return {scale: scale}
    labels = [str(AUTO) if isinstance(scale, AutoScale) else scale for scale in flag]
    if len(set(labels)) != len(labels):
        raise HarnessError(f"--matryoshka_vis_token_scale lists a scale twice: {labels}")
    try:
        return {
            label: resolve_budget(scale, model, model_path)
            if isinstance(scale, AutoScale)
            else model.resolve_scale(scale)
            for label, scale in zip(labels, flag)
        }
    except (TypeError, ValueError) as e:
        raise HarnessError(f"--matryoshka_vis_token_scale: {e}") from None


def run(args: argparse.Namespace, samples: Sequence[Sample]) -> dict[Label, Path]:
    """Answer the chunk's samples at every budget; returns {scale or "auto": answers file}."""
    samples = get_chunk(samples, args.num_chunks, args.chunk_idx)
    check_unique(samples)
    # Before the model loads (minutes for a 7B one): a missing image should not wait for it.
    missing = [s for s in samples if s.image_file is not None and not os.path.exists(s.image_file)]
    if missing:
        first = missing[0]
        raise HarnessError(f"{first.source}: image file not found: {first.image_file} ({len(missing)} missing)")
    generator = load_model(args.model_path, args.model_base, args.device or default_device(), conv_mode=args.conv_mode)
    budgets = run_budgets(generator.model, args.matryoshka_vis_token_scale, args.model_path)
    paths = {label: scale_answers_file(args.answers_file, label, len(budgets) > 1) for label in budgets}
    if args.overwrite:
        for path in paths.values():
            path.unlink(missing_ok=True)
    answered = {label: read_answered(path, label) for label, path in paths.items()}
    todo = [sample for sample in samples if any(q.key not in answered[s] for s in budgets for q in sample.queries)]
    if len(todo) < len(samples):
        logger.info("resuming: %d of %d images already answered at every scale", len(samples) - len(todo), len(samples))

    params = SamplingParams(args.temperature, args.top_p, args.max_new_tokens, num_beams=args.num_beams)
    answerer = Answerer(generator, params, args.batch_size)
    dataset = SampleDataset(todo, generator.image_processor, generator.model.config)
    loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.num_workers, collate_fn=_keep_list)
    writer = AnswerWriter(paths, generator.model_name)
    progress = tqdm(total=len(todo), desc=f"answering at {len(budgets)} scale(s)", unit="image")
    try:
        for batch in loader:
            pending = {s: {q.key for p in batch for q in p.sample.queries} - answered[s] for s in budgets}
            answerer.answer(batch, {s: keys for s, keys in pending.items() if keys}, budgets, writer.write)
            progress.update(len(batch))
    finally:
        progress.close()
        writer.close()
    order = [q.key for sample in samples for q in sample.queries]
    for path in paths.values():
        reorder_answers(path, order)
    for label, path in paths.items():
        logger.info("scale %s: answers in %s", label, path)
    return paths


# -- command line ----------------------------------------------------------------------------------


def build_parser(description: str, max_new_tokens: int, num_workers: int = 0) -> argparse.ArgumentParser:
    """The flags every benchmark shares (LLaVA's names; dashes and underscores both accepted)."""
    parser = argparse.ArgumentParser(description=description)
    add = parser.add_argument
    add("--model-path", "--model_path", dest="model_path", required=True)
    add("--model-base", "--model_base", dest="model_base", default=None)
    add("--image-folder", "--image_folder", dest="image_folder", default="")
    add("--question-file", "--question_file", dest="question_file", required=True)
    add("--answers-file", "--answers_file", dest="answers_file", required=True)
    add("--conv-mode", "--conv_mode", dest="conv_mode", default=None, help="default: the checkpoint's template")
    add("--num-chunks", "--num_chunks", dest="num_chunks", type=int, default=1)
    add("--chunk-idx", "--chunk_idx", dest="chunk_idx", type=int, default=0)
    add("--temperature", type=float, default=0.2, help="0 for greedy decoding")
    add("--top_p", "--top-p", dest="top_p", type=float, default=None)
    add("--num_beams", "--num-beams", dest="num_beams", type=int, default=1)
    add("--max_new_tokens", "--max-new-tokens", dest="max_new_tokens", type=int, default=max_new_tokens)
    add("--batch-size", "--batch_size", dest="batch_size", type=int, default=1, help="prompts per generate call")
    add("--num-workers", "--num_workers", dest="num_workers", type=int, default=num_workers)
    add("--device", default=None, help="cuda, cpu or mps (default: the best available)")
    add_scale_argument(
        parser,
        "visual tokens per image (per crop for anyres): one scale, or a list '1,9,36,144,576' answered in one "
        "pass with one answers file per scale (answers.jsonl -> answers_s36.jsonl); 'auto' (alone or in the "
        "list) answers each question at the budget the checkpoint's calibrated policy picks; default: the "
        "checkpoint's scale",
        several=True,
        auto=True,
    )
    add("--overwrite", action="store_true", help="start the answers files afresh instead of resuming them")
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    return args


def require(record: dict[str, Any], keys: Sequence[str], source: str) -> None:
    missing = [k for k in keys if k not in record]
    if missing:
        raise HarnessError(f"{source}: question has no {', '.join(map(repr, missing))} (keys: {sorted(record)})")
