"""Writers for the small benchmark files the scorer tests build in a temporary folder."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def write_jsonl(tmp_path: Path) -> Callable[[str, Iterable[dict[str, Any]]], Path]:
    """write_jsonl("labels.jsonl", rows) -> the file under tmp_path, one JSON object per line."""

    def write(name: str, rows: Iterable[dict[str, Any]]) -> Path:
        path = tmp_path / name
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
        return path

    return write


@pytest.fixture
def write_json(tmp_path: Path) -> Callable[[str, Any], Path]:
    """write_json("problems.json", obj) -> the file under tmp_path."""

    def write(name: str, obj: Any) -> Path:
        path = tmp_path / name
        path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
        return path

    return write


@pytest.fixture
def write_answers(write_jsonl: Callable[[str, Iterable[dict[str, Any]]], Path]) -> Callable[..., Path]:
    """write_answers({question_id: text}) writes an answers file in LLaVA's format.

    `extra={question_id: {...}}` adds fields to a line (e.g. MME's prompt, MMBench's round_idx);
    `rows=[(question_id, text, extra), ...]` allows a question id to repeat.
    """

    def write(
        texts: dict[Any, str] | None = None,
        name: str = "answers.jsonl",
        extra: dict[Any, dict[str, Any]] | None = None,
        rows: list[tuple[Any, str, dict[str, Any]]] | None = None,
    ) -> Path:
        items = rows if rows is not None else [(q, t, (extra or {}).get(q, {})) for q, t in (texts or {}).items()]
        lines = []
        for qid, text, fields in items:
            line = {"question_id": qid, "prompt": f"question {qid}", "text": text, "answer_id": "x", "model_id": "m3"}
            lines.append({**line, "metadata": {}, **fields})
        return write_jsonl(name, lines)

    return write
