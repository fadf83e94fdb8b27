"""The lmms-eval plugin `llava_m3`: registration through lmms-eval's plugin mechanisms, and its requests.

Skipped when lmms-eval is not installed (the project does not depend on it); the pyproject check runs always.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from generation_helpers import common_args, read_jsonl, write_images, write_jsonl
from PIL import Image

from llava.constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX
from llava.conversation import conv_templates
from llava.eval import lmms_eval_plugin
from llava.mm_utils import process_images, tokenizer_image_token
from llava.model.builder import load_pretrained_model

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


def _request(kind: str, arguments: tuple, doc_id: int, idx: int = 0) -> Any:
    from lmms_eval.api.instance import Instance

    return Instance(kind, arguments, idx=idx, metadata={"task": "toy", "doc_id": doc_id, "repeats": 1})


def _toy_model(tiny_llava: Path, tmp_path: Path, scale: int, count: int, batch_size: int = 1) -> tuple[Any, list]:
    """A `llava_m3` over the tiny random checkpoint, with a toy task of `count` image questions."""
    from llava.eval.lmms_eval_plugin.models.llava_m3 import LlavaM3

    lm = LlavaM3.create_from_arg_string(
        f"pretrained={tiny_llava},matryoshka_vis_token_scale={scale}", {"batch_size": batch_size, "device": "cpu"}
    )
    names = write_images(tmp_path / "images", count)
    docs = [
        {"image": Image.open(tmp_path / "images" / name), "question": f"What is shown? {i}", "name": name}
        for i, name in enumerate(names)
    ]
    lm.task_dict = {"toy": {"test": docs}}
    return lm, docs


def _generate_requests(docs: Sequence[dict], gen_kwargs: dict[str, Any]) -> list:
    return [
        _request("generate_until", (doc["question"], dict(gen_kwargs), lambda d: [d["image"]], i, "toy", "test"), i)
        for i, doc in enumerate(docs)
    ]


def test_answers_a_request_as_the_harness_does(lmms_api: Any, tiny_llava_pad: Path, tmp_path: Path) -> None:
    from llava.eval import model_vqa

    lm, docs = _toy_model(tiny_llava_pad, tmp_path, 36, 2, batch_size=2)
    assert (lm.scale, lm.batch_size, lm.generator.conv_mode) == (36, 2, "llava_v1")
    answers = lm.generate_until(_generate_requests(docs, {"max_new_tokens": 4, "temperature": 0, "until": []}))

    # The same questions through the harness at the same budget give the same greedy answers.
    rows = [{"question_id": i, "image": doc["name"], "text": doc["question"]} for i, doc in enumerate(docs)]
    questions = write_jsonl(tmp_path / "q.jsonl", rows)
    argv = common_args(
        tiny_llava_pad, questions, tmp_path / "a.jsonl", "36", "--image-folder", str(tmp_path / "images")
    )
    model_vqa.main(argv)
    assert answers == [line["text"] for line in read_jsonl(tmp_path / "a.jsonl")]


def test_until_stops_generation(lmms_api: Any, tiny_llava_pad: Path, tmp_path: Path) -> None:
    lm, docs = _toy_model(tiny_llava_pad, tmp_path, 9, 1)
    steps: list[int] = []
    hook = lm.model.register_forward_hook(lambda module, args, output: steps.append(1))
    free = lm.generate_until(_generate_requests(docs, {"max_new_tokens": 12, "temperature": 0, "until": []}))[0]
    free_steps = len(steps)
    # The random model rambles for all 12 tokens; stop it at the first character it writes after its third.
    assert free_steps == 12 and len(free) > 4, free
    stop = free[3]
    steps.clear()
    stopped = lm.generate_until(_generate_requests(docs, {"max_new_tokens": 12, "temperature": 0, "until": [stop]}))
    hook.remove()
    assert stopped == [free[: free.index(stop)].strip()]
    assert len(steps) < free_steps  # stopped while generating, not cut afterwards


def _lmms_eval_style_losses(
    checkpoint: Path, conv_mode: str, scale: int, context: str, continuations: Sequence[str], image: Image.Image
) -> list[tuple[float, bool]]:
    """What lmms-eval's own `llava` model computes, through LLaVA's public API on a separately loaded model:
    the model's loss on the conversation with the continuation as the assistant's answer (the template's turn
    end included), the prompt's tokens masked out of the labels; and whether greedy decoding gives those
    tokens. The template itself puts the space between the role and the answer."""
    tokenizer, model, image_processor, _ = load_pretrained_model(str(checkpoint), None, checkpoint.name, device="cpu")
    pixels = process_images([image], image_processor, model.config)
    results = []
    for continuation in continuations:
        conv = conv_templates[conv_mode].copy()
        conv.append_message(conv.roles[0], DEFAULT_IMAGE_TOKEN + "\n" + context)
        conv.append_message(conv.roles[1], None)
        context_ids = tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt")
        conv.messages[-1][1] = continuation.lstrip(" ")
        full_ids = tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt")
        labels = full_ids.clone()
        labels[: len(context_ids)] = IGNORE_INDEX
        with torch.no_grad():
            out = model(
                input_ids=full_ids[None],
                labels=labels[None],
                images=pixels,
                image_sizes=[image.size],
                matryoshka_vis_token_scale=scale,
            )
        target = full_ids[len(context_ids) :]
        greedy = out.logits[0, -len(target) - 1 : -1].argmax(-1)
        results.append((out.loss.item(), bool(torch.equal(greedy, target))))
    return results


@pytest.mark.parametrize("scale", [576, 1])
def test_loglikelihood_is_lmms_evals_loss(lmms_api: Any, tiny_llava_pad: Path, tmp_path: Path, scale: int) -> None:
    lm, docs = _toy_model(tiny_llava_pad, tmp_path, scale, 2)
    options = [" yes", " no", " a red square"]
    requests = [
        _request("loglikelihood", (doc["question"], option, lambda d: [d["image"]], d_id, "toy", "test"), d_id, i)
        for d_id, doc in enumerate(docs)
        for i, option in enumerate(options)
    ]
    scored = lm.loglikelihood(requests)
    expected = [
        result
        for doc in docs
        for result in _lmms_eval_style_losses(
            tiny_llava_pad, lm.generator.conv_mode, scale, doc["question"], options, doc["image"].convert("RGB")
        )
    ]
    assert [greedy for _, greedy in scored] == [greedy for _, greedy in expected]
    torch.testing.assert_close([loss for loss, _ in scored], [loss for loss, _ in expected], rtol=1e-5, atol=1e-5)
    assert all(loss > 0 for loss, _ in scored)  # a loss, ranked lowest-first: lmms-eval takes the argmin


def test_lmms_eval_own_options_are_refused_in_model_args(lmms_api: Any, tiny_llava_pad: Path) -> None:
    from llava.eval.lmms_eval_plugin.models.llava_m3 import LlavaM3

    for arg, flag in [("batch_size=4", "--batch_size"), ("device=cpu", "--device")]:
        with pytest.raises(ValueError, match=f"give them as lmms-eval's own {flag}"):
            LlavaM3.create_from_arg_string(f"pretrained={tiny_llava_pad},{arg}", {"batch_size": 1})


def test_unknown_model_args_are_refused(lmms_api: Any, tiny_llava_pad: Path) -> None:
    from llava.eval.lmms_eval_plugin.models.llava_m3 import LlavaM3

    with pytest.raises(ValueError, match=r"unknown model_args \['scale'\]"):
        LlavaM3.create_from_arg_string(f"pretrained={tiny_llava_pad},scale=36", {"device": "cpu"})
