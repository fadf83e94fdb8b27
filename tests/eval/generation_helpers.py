"""Shared by the answer-generation tests: small images, question files, and counters of model work."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from llava.eval import harness
from llava.generation import Generator, PromptBatch

# Aspect ratios differ on purpose: anyres checkpoints then give each image a different token count.
IMAGE_SIZES = [(48, 48), (40, 56), (64, 32), (30, 45), (52, 44), (36, 36)]


def script_env(tmp_path: Path, model: Path, **extra: str) -> dict[str, str]:
    """The environment the evaluation scripts (scripts/v1_5/eval, scripts/video) read: a tiny checkpoint on
    the CPU, outputs under `tmp_path`, three new tokens per answer; `extra` adds or replaces variables."""
    return os.environ | {
        "MODEL_PATH": str(model),
        "EVAL_DIR": str(tmp_path / "eval"),
        "RESULTS_DIR": str(tmp_path / "results"),
        "PYTHON": sys.executable,
        "DEVICE": "cpu",
        "GEN_ARGS": "--num-workers 0 --max_new_tokens 3",
        **extra,
    }


def write_images(folder: Path, count: int) -> list[str]:
    """`count` small PNGs of different sizes and colours; returns their file names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        size = IMAGE_SIZES[i % len(IMAGE_SIZES)]
        name = f"img_{i}.png"
        Image.new("RGB", size, (40 * i % 256, 200 - 30 * i % 200, 90)).save(folder / name)
        names.append(name)
    return names


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def vqa_questions(path: Path, image_names: list[str]) -> Path:
    """LLaVA's question JSONL, one question per image (TextVQA-style ids)."""
    rows = [
        {"question_id": 100 + i, "image": name, "text": f"What is written in picture {i}?\nAnswer briefly."}
        for i, name in enumerate(image_names)
    ]
    return write_jsonl(path, rows)


@dataclass
class WorkCounter:
    """What the model was asked to do during a run."""

    tower_batches: list[int] = field(default_factory=list)
    """Crops per vision-tower call."""
    generate_rows: list[int] = field(default_factory=list)
    """Prompts per generate call."""

    @property
    def tower_calls(self) -> int:
        return len(self.tower_batches)

    @property
    def generate_calls(self) -> int:
        return len(self.generate_rows)

    def reset(self) -> None:
        self.tower_batches.clear()
        self.generate_rows.clear()


def count_work(monkeypatch: pytest.MonkeyPatch) -> WorkCounter:
    """Count vision-tower calls (a forward hook on `get_vision_tower()`) and the generate calls (`Generator.generate`,
    wrapped) of harness runs."""
    counter = WorkCounter()
    load_model = harness.load_model

    def counting_load_model(*args: Any, **kwargs: Any) -> Generator:
        generator = load_model(*args, **kwargs)
        tower = generator.model.get_vision_tower()
        tower.register_forward_hook(lambda module, inputs, output: counter.tower_batches.append(inputs[0].shape[0]))
        generate = generator.generate

        def counting_generate(batch: PromptBatch, *args: Any, **kwargs: Any) -> Any:
            counter.generate_rows.append(len(batch.input_ids))
            return generate(batch, *args, **kwargs)

        monkeypatch.setattr(generator, "generate", counting_generate)
        return generator

    monkeypatch.setattr(harness, "load_model", counting_load_model)
    return counter


def common_args(model: Path, questions: Path, answers: Path, scales: str | None, *extra: str) -> list[str]:
    """Flags of a quick greedy CPU run."""
    argv = ["--model-path", str(model), "--question-file", str(questions), "--answers-file", str(answers)]
    argv += ["--temperature", "0", "--max_new_tokens", "4", "--num-workers", "0", "--device", "cpu"]
    if scales is not None:
        argv += ["--matryoshka_vis_token_scale", scales]
    return argv + list(extra)
