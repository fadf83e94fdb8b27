"""M3-Shapes: determinism, LLaVA record format, and answers re-derived from scene metadata and pixels."""

import hashlib
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llava.data import shapes

NUM_IMAGES = 150
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shapes")
    shapes.generate_split(out, "train", NUM_IMAGES, seed=7)
    return out


def _load(out: Path, split: str) -> tuple[list[dict], dict[str, dict]]:
    records = json.loads((out / f"{split}.json").read_text())
    scenes = {scene["image"]: scene for scene in json.loads((out / f"{split}_scenes.json").read_text())}
    return records, scenes


def _pixels(out: Path, image: str) -> np.ndarray:
    return np.asarray(Image.open(out / image).convert("RGB"))


def _color_mask(pixels: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.all(pixels == np.asarray(rgb, dtype=np.uint8), axis=-1)


def _boxes_apart(a: list[int], b: list[int]) -> bool:
    return a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1]


def _answer(record: dict) -> str:
    return record["conversations"][1]["value"]


def _question(record: dict) -> str:
    return record["conversations"][0]["value"].removeprefix("<image>\n")


def test_same_seed_gives_identical_files(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    records_a = shapes.generate_split(a, "train", 12, seed=3)
    records_b = shapes.generate_split(b, "train", 12, seed=3)
    assert records_a == records_b
    for name in ("train.json", "train_scenes.json", "train_meta.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    for image in sorted((a / "images").iterdir()):
        assert image.read_bytes() == (b / "images" / image.name).read_bytes()


def test_different_seeds_differ(tmp_path: Path) -> None:
    shapes.generate_split(tmp_path / "a", "train", 6, seed=3)
    shapes.generate_split(tmp_path / "b", "train", 6, seed=4)
    assert (tmp_path / "a" / "train_scenes.json").read_bytes() != (tmp_path / "b" / "train_scenes.json").read_bytes()
    differing = [
        i
        for i in range(6)
        if (tmp_path / "a" / f"images/train_{i}.png").read_bytes()
        != (tmp_path / "b" / f"images/train_{i}.png").read_bytes()
    ]
    assert len(differing) == 6


def test_records_are_llava_format_with_single_word_answers(train_dir: Path) -> None:
    records, scenes = _load(train_dir, "train")
    vocab = set(shapes.vocabulary())
    assert len({record["id"] for record in records}) == len(records)
    assert len(records) >= 4 * NUM_IMAGES
    for record in records:
        assert set(record) == {"id", "image", "conversations", "question_type", "difficulty"}
        assert isinstance(record["id"], str)
        assert (train_dir / record["image"]).is_file() and record["image"] in scenes
        human, gpt = record["conversations"]
        assert human["from"] == "human" and gpt["from"] == "gpt"
        assert human["value"].startswith("<image>\n")
        assert sum(turn["value"].count("<image>") for turn in record["conversations"]) == 1
        assert set(shapes.split_words(_question(record))) <= vocab
        assert shapes.split_words(_answer(record)) == [_answer(record)] and _answer(record) in vocab
        assert _answer(record) in shapes.ANSWERS[record["question_type"]]
        assert record["difficulty"] == shapes.QUESTION_TYPES[record["question_type"]]


def test_images_match_scene_metadata(train_dir: Path) -> None:
    """Every shape is drawn inside its own box, boxes never touch, and nothing else is drawn."""
    _, scenes = _load(train_dir, "train")
    for image, scene in scenes.items():
        pixels = _pixels(train_dir, image)
        size = scene["image_size"]
        assert pixels.shape == (size, size, 3)
        background = _color_mask(pixels, shapes.BACKGROUND_COLORS[scene["background"]])
        covered = np.zeros_like(background)
        assert 1 <= len(scene["shapes"]) <= shapes.MAX_SHAPES
        for i, shape in enumerate(scene["shapes"]):
            x0, y0, x1, y1 = shape["bbox"]
            assert x1 - x0 + 1 == shapes.shape_side(shape["size"], size) == y1 - y0 + 1
            inside = _color_mask(pixels[y0 : y1 + 1, x0 : x1 + 1], shapes.SHAPE_COLORS[shape["color"]])
            assert inside.sum() > 0
            covered[y0 : y1 + 1, x0 : x1 + 1] = True
            assert all(_boxes_apart(shape["bbox"], other["bbox"]) for other in scene["shapes"][i + 1 :])
        assert background[~covered].all()


def test_answers_rederived_from_scenes_and_pixels(train_dir: Path) -> None:
    records, scenes = _load(train_dir, "train")
    asked: dict[str, set[str]] = {image: set() for image in scenes}
    for record in records:
        scene, pixels, answer = scenes[record["image"]], _pixels(train_dir, record["image"]), _answer(record)
        asked[record["image"]].add(record["question_type"])
        qtype, question, items = record["question_type"], _question(record), scenes[record["image"]]["shapes"]
        if qtype == "background_color":
            assert answer == scene["background"]
            assert tuple(pixels[0, 0]) == shapes.BACKGROUND_COLORS[answer]
        elif qtype == "heavier_half":
            assert _heavier_half(pixels, scene) == answer
        elif qtype == "dominant_color":
            assert _dominant_color(pixels) == answer
        elif qtype == "quadrant_color":
            quadrant = next(q for q in shapes.QUADRANTS if f" {q} " in question)
            box = shapes.quadrant_box(quadrant, scene["image_size"])
            inside = [
                s
                for s in items
                if box[0] <= s["bbox"][0]
                and s["bbox"][2] <= box[2]
                and box[1] <= s["bbox"][1]
                and s["bbox"][3] <= box[3]
            ]
            touching = [s for s in items if not _boxes_apart(list(box), s["bbox"])]
            assert len(inside) == 1 and len(touching) == 1 and inside[0]["color"] == answer
            region = pixels[box[1] : box[3] + 1, box[0] : box[2] + 1].reshape(-1, 3)
            colors = {tuple(p) for p in np.unique(region, axis=0)} - {shapes.BACKGROUND_COLORS[scene["background"]]}
            assert colors == {shapes.SHAPE_COLORS[answer]}
        elif qtype == "count_shapes":
            assert answer == str(len(items))
        elif qtype == "count_small_color":
            color = next(c for c in shapes.SHAPE_COLORS if f"small {c} shapes" in question)
            assert answer == str(sum(s["size"] == "small" and s["color"] == color for s in items))
        elif qtype == "small_x":
            assert answer == ("yes" if any(s["size"] == "small" and s["kind"] == "x" for s in items) else "no")
        else:
            raise AssertionError(f"unexpected question type {qtype}")
    for image, types in asked.items():
        pixels, scene = _pixels(train_dir, image), scenes[image]
        assert {"background_color", "count_shapes", "count_small_color", "small_x"} <= types
        assert ("heavier_half" in types) == (_heavier_half(pixels, scene) is not None)
        assert ("dominant_color" in types) == (_dominant_color(pixels) is not None)


def _heavier_half(pixels: np.ndarray, scene: dict) -> str | None:
    filled = ~_color_mask(pixels, shapes.BACKGROUND_COLORS[scene["background"]])
    mid = filled.shape[1] // 2
    left, right = filled[:, :mid].sum(), filled[:, mid:].sum()
    if left >= shapes.HALF_RATIO * right:
        return "left"
    if right >= shapes.HALF_RATIO * left:
        return "right"
    return None


def _dominant_color(pixels: np.ndarray) -> str | None:
    areas = {name: _color_mask(pixels, rgb).sum() for name, rgb in shapes.SHAPE_COLORS.items()}
    (top, top_area), (_, second_area) = sorted(areas.items(), key=lambda item: -item[1])[:2]
    return top if top_area >= shapes.DOMINANT_RATIO * second_area else None


def test_quadrant_questions_only_when_unambiguous() -> None:
    size = 96
    one = shapes.Shape("circle", "red", "small", (5, 5, 14, 14))
    straddling = shapes.Shape("square", "blue", "large", (40, 60, 63, 83))
    scene = shapes.Scene("black", (one, straddling), size)
    assert shapes.quadrant_answers(scene) == {"top left": "red"}
    second = shapes.Shape("x", "green", "small", (30, 30, 39, 39))
    assert shapes.quadrant_answers(shapes.Scene("black", (one, straddling, second), size)) == {}


def test_answers_are_balanced(train_dir: Path) -> None:
    meta = json.loads((train_dir / "train_meta.json").read_text())
    assert meta["data_version"] == shapes.DATA_VERSION and meta["seed"] == 7
    assert meta["num_images"] == NUM_IMAGES
    for qtype, counts in meta["answer_counts"].items():
        values = list(counts.values())
        assert sum(values) >= NUM_IMAGES // 3, qtype
        assert max(values) <= 1.5 * min(values) + 3, (qtype, counts)
    records, _ = _load(train_dir, "train")
    assert Counter(r["question_type"] for r in records) == meta["question_type_counts"]


def test_large_image_size(tmp_path: Path) -> None:
    records = shapes.generate_split(tmp_path, "test", 8, seed=11, image_size=336)
    assert records
    with Image.open(tmp_path / "images" / "test_0.png") as image:
        assert image.size == (336, 336)
    _, scenes = _load(tmp_path, "test")
    sides = {shape["bbox"][2] - shape["bbox"][0] + 1 for scene in scenes.values() for shape in scene["shapes"]}
    assert sides <= {84, 34}


def test_invalid_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="image_size"):
        shapes.generate_split(tmp_path, "train", 1, seed=0, image_size=97)
    with pytest.raises(ValueError, match="split"):
        shapes.generate_split(tmp_path, "val", 1, seed=0)


def test_cli_uses_different_default_seeds_per_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for split in shapes.SPLITS:
        shapes.main(["--out", str(tmp_path), "--split", split, "--num-images", "4"])
    assert "wrote" in capsys.readouterr().out
    metas = {split: json.loads((tmp_path / f"{split}_meta.json").read_text()) for split in shapes.SPLITS}
    assert metas["train"]["seed"] == shapes.DEFAULT_SEEDS["train"] != metas["test"]["seed"]
    assert len(list((tmp_path / "images").glob("test_*.png"))) == 4
    shapes.main(
        ["--out", str(tmp_path / "s"), "--split", "train", "--num-images", "2", "--seed", "5", "--image-size", "64"]
    )
    assert json.loads((tmp_path / "s" / "train_meta.json").read_text())["seed"] == 5


def test_package_runs_as_a_command(tmp_path: Path) -> None:
    """`python -m llava.data.shapes` is what train_tiny.sh and the docs call: the package's __main__ runs the CLI."""
    command = [
        sys.executable,
        "-m",
        "llava.data.shapes",
        "--out",
        str(tmp_path),
        "--split",
        "test",
        "--num-images",
        "3",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO, check=False)
    assert result.returncode == 0, result.stderr
    records = json.loads((tmp_path / "test.json").read_text())
    assert result.stdout == f"wrote {len(records)} questions on 3 images to {tmp_path / 'test.json'}\n"
    assert json.loads((tmp_path / "test_meta.json").read_text())["seed"] == shapes.DEFAULT_SEEDS["test"]
    bad = subprocess.run(
        [*command[:3], "--out", str(tmp_path), "--split", "val"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    assert bad.returncode == 2 and "invalid choice: 'val'" in bad.stderr


# sha256 of the first 30 held-out images (default test seed) as shapes-v1 writes them: the JSON files'
# bytes and the decoded RGB pixels (not the PNG bytes, which depend on the zlib build). The shipped
# checkpoints were trained and measured on this data, so a change here needs a new DATA_VERSION.
GOLDEN_NUM_IMAGES = 30
GOLDEN_TEST_SPLIT = {
    "test.json": "790ea928ea180139217ce2fac562868010c70ea8ff0ec770c393433b640f3c8b",
    "test_scenes.json": "7391caf305a0cba948b20c7a4e17cf4a46aabb8fb9c2b9c853721ab3a2b8bee6",
    "test_meta.json": "c5c0b6377a0f66aca6ed3756f154cf800ee825c274c2e68faf10c267cec6748f",
    "pixels": "f2c4e569344622f034d90f267e791080a386c3a48ee350ce4cc698774121344e",
}


def test_default_test_seed_gives_the_recorded_data(tmp_path: Path) -> None:
    shapes.generate_split(tmp_path, "test", GOLDEN_NUM_IMAGES, seed=shapes.DEFAULT_SEEDS["test"])
    found = {
        name: hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() for name in GOLDEN_TEST_SPLIT if "." in name
    }
    pixels = hashlib.sha256()
    for i in range(GOLDEN_NUM_IMAGES):
        pixels.update(_pixels(tmp_path, f"images/test_{i}.png").tobytes())
    found["pixels"] = pixels.hexdigest()
    assert found == GOLDEN_TEST_SPLIT, f"{shapes.DATA_VERSION} output for a fixed seed changed"


def test_vocabulary_covers_questions_and_answers() -> None:
    vocab = shapes.vocabulary()
    assert vocab == sorted(set(vocab))
    assert {"What", "color", "?", "X", "left", "navy", "purple", "0", "6", "yes", "no"} <= set(vocab)
    assert "<image>" not in vocab and "<" not in vocab


def test_answer_matches() -> None:
    assert shapes.answer_matches("Red.", "red")
    assert shapes.answer_matches("  YES ", "yes")
    assert shapes.answer_matches("three", "3")
    assert not shapes.answer_matches("red shape", "red")
    assert not shapes.answer_matches("blue", "red")
    assert not shapes.answer_matches("", "red")


def test_score() -> None:
    records = [
        {
            "id": "a",
            "conversations": [{}, {"value": "red"}],
            "question_type": "background_color",
            "difficulty": "coarse",
        },
        {"id": "b", "conversations": [{}, {"value": "3"}], "question_type": "count_shapes", "difficulty": "fine"},
        {"id": "c", "conversations": [{}, {"value": "no"}], "question_type": "small_x", "difficulty": "fine"},
    ]
    result = shapes.score(records, {"a": "Red", "b": "4"})
    assert result["accuracy"] == pytest.approx(1 / 3) and result["total"] == 3 and result["missing"] == 1
    assert result["by_difficulty"]["coarse"]["accuracy"] == 1.0
    assert result["by_difficulty"]["fine"] == {"accuracy": 0.0, "correct": 0, "total": 2}
    assert set(result["by_question_type"]) == {"background_color", "count_shapes", "small_x"}
