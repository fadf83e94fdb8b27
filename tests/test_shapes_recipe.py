"""The M3-Shapes recipe's own scripts: the tower's per-patch targets, and a short tower pretraining run."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import CLIPVisionModel

from llava.data import shapes

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts" / "shapes"
GRID = 24


def _script(name: str):
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))  # init_tiny_model imports make_conversations from its folder
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pretrain():
    return _script("pretrain_tower")


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shapes-recipe")
    shapes.generate_split(out, "train", 24, seed=3)
    return out


def test_patch_targets_follow_the_scene(pretrain, split: Path) -> None:
    records = json.loads((split / "train_scenes.json").read_text())
    patch = shapes.DEFAULT_IMAGE_SIZE // GRID
    for record in records:
        scene = pretrain.scene_from_record(record)
        t = pretrain.patch_targets(scene, GRID)
        assert all(v.shape == (GRID, GRID) for v in t.values())
        # One centre patch per shape: boxes never touch and are wider than a patch.
        assert t["centre"].sum() == len(scene.shapes)
        labels = shapes.label_map(scene)
        for shape in scene.shapes:
            x0, y0, x1, y1 = shape.bbox
            row, col = (y0 + y1) // 2 // patch, (x0 + x1) // 2 // patch
            assert t["centre"][row, col] == 1
            # The centre patch names the whole object: kind x size.
            sizes = list(shapes.SIZE_FRACTIONS)
            expected = shapes.SHAPE_KINDS.index(shape.kind) * len(sizes) + sizes.index(shape.size)
            assert t["object"][row, col] == expected
            # Where the shape covers most of the patch, the patch says what the shape is.
            inside = labels[row * patch : (row + 1) * patch, col * patch : (col + 1) * patch]
            owner = scene.shapes.index(shape) + 1
            if (inside == owner).sum() > inside.size / 2:
                assert t["kind"][row, col] == 1 + shapes.SHAPE_KINDS.index(shape.kind)
                assert t["size"][row, col] == 1 + list(shapes.SIZE_FRACTIONS).index(shape.size)
                assert t["color"][row, col] == len(shapes.BACKGROUND_COLORS) + list(shapes.SHAPE_COLORS).index(
                    shape.color
                )
        # Patches with no shape pixel at all are background: colour = the background, no kind or size.
        blocks = labels.reshape(GRID, patch, GRID, patch).max(axis=(1, 3))
        empty = blocks == 0
        assert np.all(t["color"][empty] == list(shapes.BACKGROUND_COLORS).index(scene.background))
        assert np.all(t["kind"][empty] == 0) and np.all(t["size"][empty] == 0)
        # The object head learns from the centre patches only.
        assert np.array_equal(t["object"] != pretrain.IGNORE, t["centre"] == 1)


def test_patch_targets_reject_a_grid_that_does_not_divide_the_image(pretrain, split: Path) -> None:
    record = json.loads((split / "train_scenes.json").read_text())[0]
    with pytest.raises(ValueError, match="not a multiple"):
        pretrain.patch_targets(pretrain.scene_from_record(record), 25)


def test_short_pretraining_saves_a_loadable_tower_that_learned(pretrain, split: Path, tmp_path: Path) -> None:
    init = _script("init_tiny_model")
    init.main(["--out", str(tmp_path / "init"), "--seed", "0"])
    summary = pretrain.main(
        [
            "--data", str(split), "--tower", str(tmp_path / "init" / "clip"), "--out", str(tmp_path / "tower"),
            "--steps", "30", "--batch", "8", "--val-images", "4", "--log-every", "10",
        ]
    )  # fmt: skip
    losses = [entry["loss"] for entry in summary["log"]]
    assert losses[-1] < losses[0], losses
    assert set(summary["log"][-1]["val"]) == {
        "color", "kind", "size", "centre_recall", "centre_precision",
        "kind_small", "kind_large", "object_small", "object_large",
    }  # fmt: skip
    tower = CLIPVisionModel.from_pretrained(tmp_path / "tower")
    before = CLIPVisionModel.from_pretrained(tmp_path / "init" / "clip")
    assert tower.config.num_hidden_layers == 3 and tower.config.image_size == shapes.DEFAULT_IMAGE_SIZE
    changed = [name for name, p in tower.state_dict().items() if not torch.equal(p, before.state_dict()[name])]
    assert any("patch_embedding" in name for name in changed)
    assert (tmp_path / "tower" / "preprocessor_config.json").exists()


def test_pretraining_needs_training_images_left(pretrain, split: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="leaves no training images"):
        pretrain.main(
            ["--data", str(split), "--tower", str(tmp_path), "--out", str(tmp_path / "t"), "--val-images", "24"]
        )
