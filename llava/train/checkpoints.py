"""Checkpoints that survive a killed run: published whole, resumed from only when complete.

The Trainer writes a checkpoint file by file (weights, optimizer, scheduler, RNG states, DeepSpeed's
`global_stepN/` shards, `trainer_state.json` last). A process killed in the middle (`kill -9`, a
preempted node, the OOM killer) would leave a partial `checkpoint-N/` that the next run resumes from
and fails on. So:

- saving (`LLaVATrainer`): the Trainer writes `checkpoint-N` under `<output_dir>/_unfinished_checkpoints/`;
  once every process has finished, the main process moves it into `<output_dir>` with one rename
  (atomic on one filesystem) and only then deletes old checkpoints beyond `--save_total_limit`. A
  killed save leaves nothing named `checkpoint-N`; the next run removes the unfinished folder.
- resuming (`last_complete_checkpoint`): the newest `checkpoint-N` that is complete, with a warning
  naming each newer one skipped and why (folders written by other tools or older versions can still
  be partial).

This protects against a killed process, not a machine losing power: nothing is fsync'ed, as in the
Trainer itself.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger(__name__)

UNFINISHED_DIR = "_unfinished_checkpoints"
"""Where checkpoints are written before they are published; the leading `_` keeps Hub uploads from taking it."""
CHECKPOINT_NAME = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
PROJECTOR_FILE = "mm_projector.bin"
"""Projector pretraining saves only this (with the config)."""
WEIGHT_FILES = (
    "model*.safetensors",
    "pytorch_model*.bin",
    "adapter_model.safetensors",
    "adapter_model.bin",
    PROJECTOR_FILE,
)
DEEPSPEED_LATEST = "latest"


def checkpoint_step(folder: Path) -> int | None:
    """N for a folder named `checkpoint-N`, else None."""
    match = CHECKPOINT_NAME.match(folder.name)
    return int(match.group(1)) if match else None


def incomplete_reason(folder: Path) -> str | None:
    """Why `folder` cannot be resumed from (it was cut off while being written), or None when it is complete.

    `trainer_state.json` is the Trainer's last write: after the main process's weights, optimizer and
    RNG state, and after every rank's DeepSpeed shards (DeepSpeed ends its save with a barrier). So a
    folder with a readable one is whole, bar the other ranks' small RNG files, which `LLaVATrainer`
    waits for before publishing; the other checks name what a folder damaged later lacks.
    """
    if not any(folder.iterdir()):
        return "is empty"
    state_file = folder / TRAINER_STATE_NAME
    if not state_file.is_file():
        return f"has no {TRAINER_STATE_NAME} (the Trainer writes it last)"
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return f"has a truncated or unreadable {TRAINER_STATE_NAME}"
    if not isinstance(state, dict) or "global_step" not in state:
        return f"has a {TRAINER_STATE_NAME} without a global_step"
    return _missing_weights(folder) or _missing_deepspeed_state(folder)


def _missing_weights(folder: Path) -> str | None:
    weights = [path for pattern in WEIGHT_FILES for path in folder.glob(pattern)]
    if not weights:
        return f"has no model weights ({', '.join(WEIGHT_FILES)})"
    for index in folder.glob("*.index.json"):
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
            return f"has an unreadable {index.name}"
        missing = sorted(shard for shard in shards if not (folder / shard).is_file())
        if missing:
            return f"lacks weight shards listed in {index.name}: {', '.join(missing)}"
    return None


def _missing_deepspeed_state(folder: Path) -> str | None:
    """DeepSpeed writes each process's `global_stepN/` shards, then `latest` naming the folder to load."""
    tags = sorted(path.name for path in folder.glob("global_step*") if path.is_dir())
    latest = folder / DEEPSPEED_LATEST
    if not tags and not latest.exists():
        return None
    if not latest.is_file():
        return f"has DeepSpeed state ({', '.join(tags)}) but no '{DEEPSPEED_LATEST}' file (DeepSpeed writes it last)"
    tag = latest.read_text(encoding="utf-8", errors="replace").strip()
    if tag not in tags:
        return f"has a '{DEEPSPEED_LATEST}' file naming {tag!r}, which is not there (found: {tags or 'none'})"
    return None


def last_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The newest complete `checkpoint-N` in `output_dir`, or None; warns about each newer incomplete one."""
    folders = [path for path in Path(output_dir).iterdir() if path.is_dir() and checkpoint_step(path) is not None]
    for folder in sorted(folders, key=checkpoint_step, reverse=True):
        reason = incomplete_reason(folder)
        if reason is None:
            return str(folder)
        logger.warning("skipping %s: it %s; probably cut off while being written", folder, reason)
    return None


def require_complete(folder: str | Path) -> str:
    """`folder` itself when it is a complete checkpoint (as `--resume_from_checkpoint` names one), else a ValueError."""
    path = Path(folder)
    if not path.is_dir():
        raise ValueError(f"--resume_from_checkpoint {path} is not a folder")
    reason = incomplete_reason(path)
    if reason is not None:
        raise ValueError(
            f"--resume_from_checkpoint {path} {reason}: it is incomplete, probably cut off while being written; "
            "pass an older checkpoint, or leave the flag out to resume from the newest complete one"
        )
    return str(path)


def remove_unfinished(output_dir: str | Path) -> None:
    """Delete what a killed save left in `<output_dir>/_unfinished_checkpoints/`, with a warning naming it."""
    unfinished = Path(output_dir) / UNFINISHED_DIR
    if not unfinished.exists():
        return
    names = sorted(path.name for path in unfinished.iterdir())
    logger.warning("removing %s (%s): a checkpoint save that did not finish", unfinished, ", ".join(names) or "empty")
    shutil.rmtree(unfinished, ignore_errors=True)


def publish(staged: Path, final: Path) -> None:
    """Move the fully written checkpoint `staged` to `final` with one rename, replacing what is there.

    A folder already at `final` is an incomplete one skipped at resume, or the checkpoint of a step
    trained again after resuming from an older one. If `staged` is gone, another node's main process
    on the same shared filesystem (`--save_on_each_node`) has published it.
    """
    if not staged.is_dir():
        return
    if final.exists():
        replaced = staged.with_name(f"replaced-{final.name}")
        final.rename(replaced)
        staged.rename(final)
        shutil.rmtree(replaced, ignore_errors=True)
    else:
        staged.rename(final)
    if not any(staged.parent.iterdir()):
        staged.parent.rmdir()
