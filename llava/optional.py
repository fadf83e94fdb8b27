"""Optional dependencies: imported where they are used, and a missing one names the extra that installs it.

`pip install -e .` installs what inference and serving need; training, evaluation and quantisation
add packages through the extras of pyproject.toml. Wrap each import of an optional package:

    with optional_dependency():
        import deepspeed

A `ModuleNotFoundError` for a package of `EXTRAS` becomes one that says which extra to install;
any other error (a missing package we do not know, a broken install) passes through unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

# Import name -> the extra of pyproject.toml that installs it (tests check the two agree).
EXTRAS = {
    "deepspeed": "train",
    "peft": "train",
    "bitsandbytes": "quant",
    "matplotlib": "eval",
    "pandas": "eval",
    "openpyxl": "eval",
    "openai": "eval",
    "vllm": "vllm",
}


def install_hint(package: str) -> str:
    """The message for a missing optional `package` (an import name listed in `EXTRAS`)."""
    extra = EXTRAS[package]
    return (
        f"{package} is not installed; it comes with the '{extra}' extra of llava: "
        f'pip install -e ".[{extra}]" in a checkout (or pip install "llava[{extra}]")'
    )


@contextmanager
def optional_dependency() -> Iterator[None]:
    """Turn the `ModuleNotFoundError` of an optional package imported inside into one naming its extra."""
    try:
        yield
    except ModuleNotFoundError as e:
        package = (e.name or "").partition(".")[0]
        if package not in EXTRAS:
            raise
        raise ModuleNotFoundError(install_hint(package), name=e.name) from e
