"""Shared by the video benchmark tests: IG-VLM sheets and answers files written at test time."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

OPTIONS = ["roll the handle", "tap their feet", "strum the string", "hit with sticks", "pat with hand"]


def write_sheet(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """An IG-VLM sheet: an unnamed index column first, as in IG-VLM's files."""
    columns = [""] + list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({"": i, **row} for i, row in enumerate(rows))
    return path


def choice_row(qid: str, video: str, answer: int, **extra: Any) -> dict[str, Any]:
    """A five-option row whose right answer is `OPTIONS[answer]`."""
    row = {"video_name": video, "question_id": qid, "question": f"what happens in {video} ({qid})"}
    return {**row, **{f"a{i}": option for i, option in enumerate(OPTIONS)}, "answer": OPTIONS[answer], **extra}


def write_answers(path: Path, texts: dict[str, str]) -> Path:
    """An answers file in LLaVA's format: {question_id: text}."""
    lines = [{"question_id": qid, "prompt": "q", "text": text, "metadata": {}} for qid, text in texts.items()]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path
