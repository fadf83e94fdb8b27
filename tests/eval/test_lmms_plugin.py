"""The lmms-eval plugin `llava_m3`: registration through lmms-eval's plugin mechanisms, and one answered request.

Skipped when lmms-eval is not installed (the project does not depend on it); the pyproject check runs always.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import Any

import pytest
from generation_helpers import common_args, read_jsonl, write_images, write_jsonl
from PIL import Image

from llava.eval import lmms_eval_plugin

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def lmms_api() -> Any:
    return pytest.importorskip("lmms_eval.api.model", reason="lmms-eval is not installed")


def test_pyproject_declares_the_entry_point() -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    section = pyproject.split('[project.entry-points."lmms_eval.models"]\n', 1)[1].split("\n[", 1)[0]
    assert 'llava_m3 = "llava.eval.lmms_eval_plugin:manifest"' in section.splitlines()
    assert lmms_eval_plugin.CLASS_PATH.endswith("models.llava_m3.LlavaM3")


def test_entry_point_registers_llava_m3(lmms_api: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lmms_eval.models.registry_v2 import ModelRegistryV2

    # An installed distribution's metadata, declaring the same entry point as our pyproject.
    dist = tmp_path / "llava_m3_entry_point_test-0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: llava-m3-entry-point-test\nVersion: 0\n")
    (dist / "entry_points.txt").write_text("[lmms_eval.models]\nllava_m3 = llava.eval.lmms_eval_plugin:manifest\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = ModelRegistryV2()
    failures = registry.load_entrypoint_manifests(overwrite=True) or ()  # 0.7.3 returns None and raises on failure
    assert not [f for f in failures if "llava" in f.source], failures
    from llava.eval.lmms_eval_plugin.models.llava_m3 import LlavaM3

    assert registry.get_model_class("llava_m3") is LlavaM3


def test_legacy_plugins_variable_finds_the_class(lmms_api: Any) -> None:
    # What lmms-eval does with LMMS_EVAL_PLUGINS=llava.eval.lmms_eval_plugin.
    plugin = "llava.eval.lmms_eval_plugin"
    models = importlib.import_module(f"{plugin}.models")
    for name, class_name in models.AVAILABLE_MODELS.items():
        cls = getattr(importlib.import_module(f"{plugin}.models.{name}"), class_name)
        assert issubclass(cls, lmms_api.lmms) and cls.is_simple


def _request(kind: str, arguments: tuple, doc_id: int) -> Any:
    from lmms_eval.api.instance import Instance

    return Instance(kind, arguments, idx=0, metadata={"task": "toy", "doc_id": doc_id, "repeats": 1})


def test_answers_a_request_as_the_harness_does(lmms_api: Any, tiny_llava_pad: Path, tmp_path: Path) -> None:
    from llava.eval import model_vqa
    from llava.eval.lmms_eval_plugin.models.llava_m3 import LlavaM3

    lm = LlavaM3.create_from_arg_string(
        f"pretrained={tiny_llava_pad},matryoshka_vis_token_scale=36", {"batch_size": 2, "device": "cpu"}
    )
    assert (lm.scale, lm.batch_size, lm.generator.conv_mode) == (36, 2, "llava_v1")
    names = write_images(tmp_path / "images", 2)
    docs = [
        {"image": Image.open(tmp_path / "images" / name), "question": f"What is shown? {i}"}
        for i, name in enumerate(names)
    ]
    lm.task_dict = {"toy": {"test": docs}}
    gen_kwargs = {"max_new_tokens": 4, "temperature": 0, "until": ["\n\n"]}
    requests = [
        _request("generate_until", (doc["question"], dict(gen_kwargs), lambda d: [d["image"]], i, "toy", "test"), i)
        for i, doc in enumerate(docs)
    ]
    answers = lm.generate_until(requests)

    # The same questions through the harness at the same budget give the same greedy answers.
    rows = [
        {"question_id": i, "image": name, "text": doc["question"]} for i, (name, doc) in enumerate(zip(names, docs))
    ]
    questions = write_jsonl(tmp_path / "q.jsonl", rows)
    argv = common_args(
        tiny_llava_pad, questions, tmp_path / "a.jsonl", "36", "--image-folder", str(tmp_path / "images")
    )
    model_vqa.main(argv)
    assert answers == [line["text"].split("\n\n")[0] for line in read_jsonl(tmp_path / "a.jsonl")]

    scored = lm.loglikelihood(
        [_request("loglikelihood", (docs[0]["question"], " yes", lambda d: [d["image"]], 0, "toy", "test"), 0)]
    )
    ((logprob, greedy),) = scored
    assert logprob < 0 and math.isfinite(logprob) and isinstance(greedy, bool)


def test_unknown_model_args_are_refused(lmms_api: Any, tiny_llava_pad: Path) -> None:
    from llava.eval.lmms_eval_plugin.models.llava_m3 import LlavaM3

    with pytest.raises(ValueError, match=r"unknown model_args \['scale'\]"):
        LlavaM3.create_from_arg_string(f"pretrained={tiny_llava_pad},scale=36", {"device": "cpu"})
