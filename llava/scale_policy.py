"""The adaptive visual-token budget: which budgets to try, how sure the model must be, where that is stored.

A `ScalePolicy` answers a request with the fewest visual tokens that suffice. It walks a ladder of
budgets (e.g. 1 → 9 → 36 → 144 → 576): at each rung the model reads the prompt with the image pooled to
that budget, and the rung's answer is kept when the model's confidence in it exceeds the rung's
threshold; otherwise the next rung is tried. The last rung always answers. The confidence signal is the
probability of the first answer token (`p_first`), known after the prefill of a rung, so a rung that is
not kept costs one prefill and no decoding (`llava.adaptive` runs the walk).

Thresholds are calibrated per checkpoint (`python -m llava.eval.calibrate_scale`) and stored beside it
as `matryoshka_policy.json`, which `--matryoshka_vis_token_scale auto` reads. This module imports no
torch, so front ends can read and show a policy without loading a model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

POLICY_FILE = "matryoshka_policy.json"
"""The sidecar file in a checkpoint folder that holds its calibrated policy."""
SIGNALS = ("p_first",)
"""Confidence signals a policy may use: the probability of the greedy first answer token."""


class ScalePolicyError(ValueError):
    """A policy or policy file that cannot be used; the message names the file and the value."""


@dataclass(frozen=True)
class AutoScale:
    """`--matryoshka_vis_token_scale auto`: the checkpoint's calibrated policy instead of a fixed budget.

    The command-line edge parses "auto" into `AUTO`; the entry point replaces it with the policy once it
    knows the checkpoint (`llava.adaptive.resolve_budget`)."""

    def __str__(self) -> str:
        return "auto"


AUTO = AutoScale()


@dataclass(frozen=True)
class ScalePolicy:
    """A ladder of budgets and, per rung, the confidence above which that rung's answer is kept.

    A rung keeps its answer when the signal is strictly above its threshold, so a threshold of 0 keeps
    every answer (the ladder ends at that rung) and 1 keeps none (the next rung is always tried). The
    last rung keeps every answer whatever its threshold.
    """

    ladder: tuple[int, ...]
    """Budgets in the order they are tried, strictly increasing (visual tokens per image, per crop for anyres)."""
    thresholds: tuple[float, ...]
    """One threshold in [0, 1] per rung."""
    signal: str = "p_first"

    def __post_init__(self) -> None:
        object.__setattr__(self, "ladder", tuple(self.ladder))
        object.__setattr__(self, "thresholds", tuple(float(t) for t in self.thresholds))
        if not self.ladder:
            raise ScalePolicyError("a scale policy needs at least one budget in its ladder")
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in self.ladder):
            raise ScalePolicyError(f"ladder {list(self.ladder)}: every budget must be a positive int")
        if any(a >= b for a, b in zip(self.ladder, self.ladder[1:])):
            raise ScalePolicyError(f"ladder {list(self.ladder)}: budgets must be strictly increasing")
        if len(self.thresholds) != len(self.ladder):
            raise ScalePolicyError(
                f"{len(self.thresholds)} thresholds {list(self.thresholds)} for a ladder of {len(self.ladder)} "
                f"budgets {list(self.ladder)}; give one per rung"
            )
        bad = [t for t in self.thresholds if not (math.isfinite(t) and 0.0 <= t <= 1.0)]
        if bad:
            raise ScalePolicyError(f"thresholds {list(self.thresholds)}: each must be in [0, 1], got {bad}")
        if self.signal not in SIGNALS:
            raise ScalePolicyError(f"signal {self.signal!r} is not one of {list(SIGNALS)}")

    @classmethod
    def uniform(cls, ladder: Sequence[int], threshold: float) -> ScalePolicy:
        """One threshold for every rung of `ladder`."""
        return cls(tuple(ladder), (threshold,) * len(ladder))

    def keeps(self, rung: int, signal: float) -> bool:
        """Whether rung `rung` (an index into the ladder) keeps an answer whose signal is `signal`."""
        return rung == len(self.ladder) - 1 or signal > self.thresholds[rung]

    @property
    def reachable(self) -> tuple[int, ...]:
        """The budgets that can answer: the ladder up to the first rung that keeps every answer."""
        for rung, threshold in enumerate(self.thresholds):
            if threshold == 0.0:
                return self.ladder[: rung + 1]
        return self.ladder

    def describe(self) -> str:
        """One line: "1 (>0.92) -> 9 (>0.90) -> 36"."""
        steps = [f"{s} (>{t:.3g})" for s, t in zip(self.reachable[:-1], self.thresholds)]
        return " -> ".join([*steps, str(self.reachable[-1])])

    def to_dict(self) -> dict[str, Any]:
        return {"ladder": list(self.ladder), "thresholds": list(self.thresholds), "signal": self.signal}

    @classmethod
    def from_dict(cls, data: Any, source: str = "policy") -> ScalePolicy:
        if not isinstance(data, dict) or "ladder" not in data or "thresholds" not in data:
            raise ScalePolicyError(f"{source}: expected {{'ladder': [...], 'thresholds': [...]}}, got {data!r}")
        unknown = sorted(set(data) - {"ladder", "thresholds", "signal"})
        if unknown:
            raise ScalePolicyError(f"{source}: unknown policy fields {unknown}; allowed: ladder, thresholds, signal")
        try:
            return cls(tuple(data["ladder"]), tuple(data["thresholds"]), data.get("signal", "p_first"))
        except (TypeError, ScalePolicyError) as e:
            raise ScalePolicyError(f"{source}: {e}") from None


@dataclass(frozen=True)
class PolicyFile:
    """What `matryoshka_policy.json` holds: the policy and how it was calibrated (for people to read)."""

    policy: ScalePolicy
    calibration: dict[str, Any] = field(default_factory=dict)
    """Target, calibration data, and the accuracy and visual tokens measured there."""


def policy_path(model_path: str | Path) -> Path:
    """Where a checkpoint folder keeps its calibrated policy."""
    return Path(model_path) / POLICY_FILE


def write_policy_file(path: str | Path, policy: ScalePolicy, calibration: dict[str, Any] | None = None) -> Path:
    """Write a policy file (a checkpoint folder's `matryoshka_policy.json`, or any path)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"policy": policy.to_dict(), "calibration": calibration or {}}
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return path


def read_policy_file(path: str | Path) -> PolicyFile:
    """Read a policy file; a missing file, bad JSON or a bad policy is a `ScalePolicyError` naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScalePolicyError(f"{path}: policy file not found") from None
    except json.JSONDecodeError as e:
        raise ScalePolicyError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
    if not isinstance(data, dict) or "policy" not in data:
        raise ScalePolicyError(f"{path}: expected {{'policy': {{...}}, 'calibration': {{...}}}}")
    calibration = data.get("calibration") or {}
    if not isinstance(calibration, dict):
        raise ScalePolicyError(f"{path}: 'calibration' must be an object, got {type(calibration).__name__}")
    return PolicyFile(ScalePolicy.from_dict(data["policy"], f"{path}: policy"), calibration)


def load_checkpoint_policy(model_path: str | Path) -> PolicyFile | None:
    """The calibrated policy stored with a local checkpoint, or None when it has none (or is a hub id)."""
    path = policy_path(model_path)
    return read_policy_file(path) if path.is_file() else None
