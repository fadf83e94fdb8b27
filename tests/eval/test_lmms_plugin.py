"""The lmms-eval plugin `llava_m3`: registration through lmms-eval's plugin mechanisms, its requests, and the
M3-Shapes tasks it ships, run through lmms-eval's own task machinery.

lmms-eval is not a dependency of the project: these tests skip where it is not installed, except under
`M3_REQUIRE_LMMS_EVAL=1`, which CI sets in the environment it builds for them (scripts/ci/lmms_eval.sh),
so there they run or fail. The pyproject and task-scoring checks run everywhere.
"""

from __future__ import annotations

import collections
import importlib
import importlib.util
import json
import os
import subprocess
import sys
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
from llava.eval.lmms_eval_plugin import shapes_task
from llava.mm_utils import process_images, tokenizer_image_token
from llava.model.builder import load_pretrained_model

REPO = Path(__file__).resolve().parents[2]
TASKS = REPO / "llava" / "eval" / "lmms_eval_plugin" / "tasks"
SHAPES_MODEL = REPO / "playground" / "shapes-m3-tiny"


@pytest.fixture
def lmms_api() -> Any:
    if os.environ.get("M3_REQUIRE_LMMS_EVAL") == "1":
        return importlib.import_module("lmms_eval.api.model")
    return pytest.importorskip("lmms_eval.api.model", reason="lmms-eval is not installed")


def test_pyproject_declares_the_entry_point_and_ships_the_tasks() -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    section = pyproject.split('[project.entry-points."lmms_eval.models"]\n', 1)[1].split("\n[", 1)[0]
    assert 'llava_m3 = "llava.eval.lmms_eval_plugin:manifest"' in section.splitlines()
    assert lmms_eval_plugin.CLASS_PATH.endswith("models.llava_m3.LlavaM3")
    package_data = pyproject.split("[tool.setuptools.package-data]\n", 1)[1].split("\n[", 1)[0]
    assert '"llava.eval.lmms_eval_plugin" = ["tasks/*/*.yaml"]' in package_data.splitlines()
    assert sorted(p.name for p in TASKS.glob("*/*.yaml")) == ["m3_shapes.yaml", "m3_shapes_mc.yaml"]


def test_shapes_task_scores_answers_as_the_demo_does() -> None:
    doc = {"answer": "3", "question_type": "count_shapes"}
    assert shapes_task.process_results(doc, ["Three."]) == {"accuracy": 1.0}
    assert shapes_task.process_results(doc, ["4"]) == {"accuracy": 0.0}
    assert shapes_task.doc_to_choice({"question_type": "small_x"}) == ["yes", "no"]


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


def test_legacy_plugins_variable_finds_the_class_and_the_tasks(lmms_api: Any) -> None:
    # What lmms-eval does with LMMS_EVAL_PLUGINS=llava.eval.lmms_eval_plugin: models from `.models`, and
    # its CLI adds the folder of `.tasks` to the task search path (it fails when there is none).
    plugin = "llava.eval.lmms_eval_plugin"
    models = importlib.import_module(f"{plugin}.models")
    for name, class_name in models.AVAILABLE_MODELS.items():
        cls = getattr(importlib.import_module(f"{plugin}.models.{name}"), class_name)
        assert issubclass(cls, lmms_api.lmms) and cls.is_simple
    tasks_folder = importlib.util.find_spec(f"{plugin}.tasks").submodule_search_locations[0]
    assert Path(tasks_folder) == TASKS


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


def _run_task(lm: Any, task: Any, limit: int, answer: str) -> list[dict[str, float]]:
    """lmms-eval's evaluator for one task, up to the per-document metrics: requests built by the task, answered
    by `lm`, filtered and scored by the task. (Its `evaluate` would then turn every (loss, greedy) pair into a
    string, `unwrap_generation_output` in 0.7.3, which breaks multiple choice for every model.)"""
    task.build_all_requests(limit=limit, rank=0, world_size=1)
    for instance, response in zip(task.instances, getattr(lm, answer)(task.instances)):
        instance.resps.append(response)
    task.apply_filters()
    by_doc = collections.defaultdict(list)
    for instance in task.instances:
        by_doc[instance.doc_id].append(instance)
    (key,) = task.instances[0].filtered_resps
    docs = task.test_docs()
    return [
        task.process_results(docs[doc_id], [i.filtered_resps[key] for i in sorted(instances, key=lambda i: i.idx)])
        for doc_id, instances in sorted(by_doc.items())
    ]


@pytest.fixture(scope="module")
def shapes_tasks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """lmms-eval's task objects for m3_shapes and m3_shapes_mc over 8 held-out images (52 questions)."""
    if os.environ.get("M3_REQUIRE_LMMS_EVAL") != "1":
        pytest.importorskip("lmms_eval.api.model", reason="lmms-eval is not installed")
    from lmms_eval.tasks import TaskManager, get_task_dict

    folder = tmp_path_factory.mktemp("lmms-shapes")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)  # the task YAMLs read their parquet relative to the working folder
        patch.setenv("LMMS_EVAL_DATASETS_CACHE", str(folder / "datasets-cache"))
        shapes_task.write_task_data(shapes_task.DEFAULT_OUT, num_images=8)
        return get_task_dict(["m3_shapes", "m3_shapes_mc"], TaskManager(include_path=str(TASKS)))


@pytest.mark.slow
@pytest.mark.skipif(not (SHAPES_MODEL / "model.safetensors").exists(), reason="no shipped checkpoint")
@pytest.mark.parametrize("scale", [576, 1])
def test_multiple_choice_through_lmms_eval_tasks(lmms_api: Any, shapes_tasks: dict[str, Any], scale: int) -> None:
    from llava.eval.lmms_eval_plugin.models.llava_m3 import LlavaM3

    lm = LlavaM3.create_from_arg_string(
        f"pretrained={SHAPES_MODEL},matryoshka_vis_token_scale={scale}", {"batch_size": 64, "device": "cpu"}
    )
    lm.task_dict = {name: task.dataset for name, task in shapes_tasks.items()}
    limit = 32
    generated = [m["accuracy"] for m in _run_task(lm, shapes_tasks["m3_shapes"], limit, "generate_until")]
    chosen = [m["acc"] for m in _run_task(lm, shapes_tasks["m3_shapes_mc"], limit, "loglikelihood")]
    assert len(generated) == len(chosen) == limit
    assert sum(generated) / limit >= {576: 0.8, 1: 0.6}[scale]
    # Ranked by lmms-eval (argmin of our losses), the options are right on the very questions the generated
    # answers are right on; the summed log-probabilities the plugin returned before put the least likely
    # option first and got almost none right.
    assert chosen == generated


def _write_lmms_eval_run(output: Path, folder_scale: int, answers: Sequence[str], accuracy: float, scale: int) -> None:
    """A run folder as lmms-eval 0.7.3 writes it with --log_samples (the fields the comparison reads), for a run
    at `scale` visual tokens written to OUTPUT/s<folder_scale>."""
    folder = output / f"s{folder_scale}" / "playground__shapes-m3-tiny"
    folder.mkdir(parents=True)
    results = {
        "results": {"m3_shapes": {"alias": "m3_shapes", "accuracy,none": accuracy}},
        "config": {"model": "llava_m3", "model_args": f"pretrained=shapes-m3-tiny,matryoshka_vis_token_scale={scale}"},
    }
    samples = "".join(json.dumps({"doc_id": i, "filtered_resps": answer}) + "\n" for i, answer in enumerate(answers))
    (folder / "20260101_120000_samples_m3_shapes.jsonl").write_text(samples)
    (folder / "20260101_120000_results.json").write_text(json.dumps(results))


def test_compare_shapes_fails_on_any_difference(tmp_path: Path) -> None:
    from llava.data import shapes

    records = shapes.generate_split(tmp_path / "data", "test", 3, shapes.DEFAULT_SEEDS["test"])
    gold = [record["conversations"][1]["value"] for record in records]
    answers = {576: gold, 1: ["wrong"] + gold[1:]}
    harness = {str(s): shapes.score(records, {r["id"]: a for r, a in zip(records, answers[s])}) for s in answers}
    (tmp_path / "harness.json").write_text(json.dumps({"results": harness}))

    def compare(name: str, runs: dict[int, tuple[list[str], float, int]]) -> subprocess.CompletedProcess:
        """runs: {folder budget: (answers, aggregated accuracy, budget in model_args)}."""
        for folder_scale, (answers_, accuracy, scale) in runs.items():
            _write_lmms_eval_run(tmp_path / name, folder_scale, answers_, accuracy, scale)
        script = [sys.executable, str(REPO / "scripts" / "lmms_eval" / "compare_shapes.py")]
        argv = ["--data-dir", str(tmp_path / "data"), "--harness", str(tmp_path / "harness.json")]
        argv += ["--lmms-eval-output", str(tmp_path / name), "--scales", "576,1"]
        return subprocess.run(script + argv, capture_output=True, text=True, cwd=REPO)

    accuracy = {s: harness[str(s)]["accuracy"] for s in answers}
    same = compare("same", {s: (answers[s], accuracy[s], s) for s in answers})
    assert same.returncode == 0, same.stderr
    assert "| 576 | 100.0 | 100.0 |" in same.stdout

    failures = {
        "budget 1: lmms-eval's answers score": {576: (gold, 1.0, 576), 1: (gold, accuracy[1], 1)},
        "budget 576: lmms-eval aggregated 0.5": {576: (gold, 0.5, 576), 1: (answers[1], accuracy[1], 1)},
        f"budget 576: {len(gold) - 1} answers logged": {576: (gold[:-1], 1.0, 576), 1: (answers[1], accuracy[1], 1)},
        "do not ask for 1 visual tokens": {576: (gold, 1.0, 576), 1: (answers[1], accuracy[1], 576)},
        "budget 1: unreadable lmms-eval output: FileNotFoundError: no lmms-eval results": {576: (gold, 1.0, 576)},
    }
    for i, (message, runs) in enumerate(failures.items()):
        result = compare(f"case{i}", runs)
        assert result.returncode == 1 and message in result.stderr, (message, result.stderr)
