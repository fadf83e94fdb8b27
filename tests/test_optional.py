"""Optional dependencies: pyproject's extras and `llava.optional.EXTRAS` agree, and a missing one names its extra.

A package is made missing the way Python documents for blocking an import: `None` in `sys.modules`.
The fresh-venv check (scripts/ci/base_install_check.sh) sees the same message with the package really absent.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from llava.optional import EXTRAS, install_hint, optional_dependency

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def project() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


def names(requirements: list[str]) -> set[str]:
    return {Requirement(r).name for r in requirements}


def test_each_optional_package_is_in_its_extra_and_not_in_the_base_install(project: dict) -> None:
    extras = project["optional-dependencies"]
    base = names(project["dependencies"])
    for package, extra in EXTRAS.items():
        assert package in names(extras[extra]), (package, extra)
        assert package not in base, package


def test_the_serving_stack_is_in_the_base_install(project: dict) -> None:
    # The original README's demo (controller, workers, web demo, CLI) runs after `pip install -e .`.
    assert {"fastapi", "uvicorn", "httpx", "requests", "pydantic", "gradio"} <= names(project["dependencies"])


def test_all_and_dev_gather_the_extras(project: dict) -> None:
    extras = project["optional-dependencies"]
    (everything,) = [Requirement(r) for r in extras["all"] if Requirement(r).name == "llava"]
    assert {"train", "eval", "quant", "serve"} <= everything.extras
    assert "llava[all]" in extras["dev"]


def test_a_missing_optional_package_names_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "deepspeed", None)
    with pytest.raises(ModuleNotFoundError, match=r"'train' extra.*pip install -e \"\.\[train\]\"") as info:
        with optional_dependency():
            import deepspeed  # noqa: F401
    assert info.value.name == "deepspeed"
    assert str(info.value) == install_hint("deepspeed")


def test_a_missing_submodule_of_an_optional_package_names_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    # A submodule imported earlier in this process would be found without its package.
    monkeypatch.delitem(sys.modules, "matplotlib.figure", raising=False)
    with pytest.raises(ModuleNotFoundError, match="'eval' extra"):
        with optional_dependency():
            from matplotlib.figure import Figure  # noqa: F401


def test_other_errors_pass_through_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "no_such_package_of_ours", None)
    with pytest.raises(ModuleNotFoundError) as info:
        with optional_dependency():
            import no_such_package_of_ours  # noqa: F401
    assert "extra" not in str(info.value)
    with pytest.raises(ValueError, match="not an import problem"):
        with optional_dependency():
            raise ValueError("not an import problem")


@pytest.mark.parametrize(
    ("module", "blocked", "extra"),
    [("llava.eval.sweep", "matplotlib", "eval"), ("llava.eval.scoring.mmbench", "pandas", "eval")],
)
def test_a_module_that_needs_an_extra_says_so_on_import(module: str, blocked: str, extra: str) -> None:
    # A fresh interpreter, so the module really runs its imports with the package unavailable.
    code = f"import sys; sys.modules[{blocked!r}] = None; import {module}"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode != 0
    assert f"ModuleNotFoundError: {install_hint(blocked)}" in result.stderr, result.stderr
    assert f"'{extra}' extra" in result.stderr
