"""Training data: early validation with record index and reason, exact lengths, over-long policy, collation."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from train_helpers import TEXT_ONLY_RECORDS, run_args, write_json
from transformers import AutoTokenizer

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.model import LlavaLlamaForCausalLM
from llava.model.anyres import anyres_grid_shape
from llava.train.data import (
    DataCollatorForSupervisedDataset,
    DataValidationError,
    LazySupervisedDataset,
    VisualTokenBudget,
    expanded_length,
)
from llava.train.model_setup import load_image_processor
from llava.train.preprocess import ConversationTemplate
from llava.train.train import main

IMAGE = "images/train_0.png"


def qa(question: str, answer: str = "red", image: str | list[str] | None = IMAGE) -> dict:
    record = {"id": question, "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}
    if image is not None:
        record["image"] = image
    return record


@pytest.fixture(scope="module")
def pad_model(tiny_llava_pad: Path):
    return LlavaLlamaForCausalLM.from_pretrained(tiny_llava_pad)


@pytest.fixture(scope="module")
def make_dataset(tiny_llava_pad: Path, pad_model, train_data, tmp_path_factory):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llava_pad)
    processor = load_image_processor(str(tiny_llava_pad), pad_model.config)
    folder = tmp_path_factory.mktemp("records")

    def make(records: list, max_length: int = 1024, overlong: str = "truncate", suffix: str = ".json", model=None):
        model = model or pad_model
        path = folder / f"data{len(list(folder.iterdir()))}{suffix}"
        if suffix == ".jsonl":
            path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
        else:
            write_json(path, records)
        return LazySupervisedDataset(
            path,
            str(train_data.folder),
            tokenizer,
            ConversationTemplate.from_name("v1"),
            processor,
            model.config,
            VisualTokenBudget.from_model(model),
            max_length,
            overlong,
        )

    return make


BAD_RECORDS = {
    "missing image file": (qa("<image>\nWhat color?", image="images/nope.png"), "image file not found: .*nope.png"),
    "too few images": (qa("<image> and <image>: same?"), r"has 2 <image> placeholder\(s\) but 1 image\(s\)"),
    "image without placeholder": (qa("What color?"), r"has 0 <image> placeholder\(s\) but 1 image\(s\)"),
    "placeholder without image": (qa("<image>\nWhat color?", image=None), r"has 1 <image> placeholder\(s\) but 0"),
    "empty conversation": ({"id": "e", "image": IMAGE, "conversations": []}, "has no conversations"),
    "no conversations key": ({"id": "n", "image": IMAGE}, "has no conversations"),
    "two human turns": (
        {"id": "h", "conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]},
        "turn 1 is from 'human' but a 'gpt' turn was expected",
    ),
    "starts with gpt": (
        {"id": "g", "conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "b"}]},
        "turn 0 is from 'gpt' but a 'human' turn was expected",
    ),
    "unanswered": ({"id": "u", "conversations": [{"from": "human", "value": "a"}]}, "ends with a human turn"),
    "empty message": (qa("<image>\nWhat color?", answer="  "), r"turn 1 \(gpt\) is empty"),
    "unknown role": (
        {"id": "r", "conversations": [{"from": "bot", "value": "a"}, {"from": "gpt", "value": "b"}]},
        "turn 0 has unknown role 'bot'",
    ),
    "image in the answer": (qa("What?", answer="<image>", image=None), r"turn 1 \(gpt\) contains <image>"),
    "image not a path": (qa("<image>\nWhat color?", image=[7]), "'image' must be a path or a list of paths"),
}


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_bad_record_fails_early_with_index_and_reason(make_dataset, case):
    record, reason = BAD_RECORDS[case]
    good = qa("<image>\nWhat color?")
    with pytest.raises(DataValidationError, match=rf"1 bad record\(s\):\n  record 2 \(id=.*\): {reason}"):
        make_dataset([good, good, record, good])


def test_every_bad_record_is_listed(make_dataset):
    good, missing = qa("<image>\nWhat color?"), qa("<image>\nWhat?", image="images/nope.png")
    with pytest.raises(DataValidationError, match=r"2 bad record\(s\):\n  record 1 .*\n  record 3 "):
        make_dataset([good, missing, good, missing])


def test_lengths_count_visual_tokens_at_the_largest_scale(make_dataset, pad_model):
    dataset = make_dataset([qa("<image>\nWhat color?"), TEXT_ONLY_RECORDS[0]])
    assert pad_model.config.matryoshka_train_scales == [576, 144, 36, 9, 1]
    for i in range(len(dataset)):
        sample = dataset[i]
        images = int((sample["input_ids"] == IMAGE_TOKEN_INDEX).sum())
        assert dataset.lengths[i] == expanded_length(sample["input_ids"].tolist(), [576] * images)
    assert dataset.modality_lengths[0] > 576 and dataset.modality_lengths[1] < 0


def test_overlong_sample_is_truncated_with_a_warning(make_dataset, caplog):
    long_answer = " ".join(["red circle"] * 40)
    with caplog.at_level(logging.WARNING, logger="llava.train.data"):
        dataset = make_dataset([qa("<image>\nWhat color?", answer=long_answer), qa("<image>\nWhat?")], max_length=660)
    assert "1 sample(s) longer than model_max_length=660" in caplog.text and "truncated: records 0" in caplog.text
    sample = dataset[0]
    assert expanded_length(sample["input_ids"].tolist(), [576]) == 660
    assert (sample["labels"] != IGNORE_INDEX).any()
    assert len(dataset) == 2


def test_overlong_sample_is_dropped_when_asked(make_dataset, caplog):
    long_answer = " ".join(["red circle"] * 40)
    records = [qa("<image>\nWhat color?"), qa("<image>\nWhat color?", answer=long_answer)]
    with caplog.at_level(logging.WARNING, logger="llava.train.data"):
        dataset = make_dataset(records, max_length=660, overlong="drop")
    assert len(dataset) == 1 and dataset.dropped == [1]
    assert "are dropped: records 1" in caplog.text


def test_sample_whose_image_does_not_fit_is_dropped_even_when_truncating(make_dataset, caplog):
    chatter = " ".join(["what color is the background"] * 12)
    late_image = {
        "id": "late",
        "image": IMAGE,
        "conversations": [
            {"from": "human", "value": chatter},
            {"from": "gpt", "value": "gray"},
            {"from": "human", "value": "<image>\nWhat color?"},
            {"from": "gpt", "value": "red"},
        ],
    }
    with caplog.at_level(logging.WARNING, logger="llava.train.data"):
        dataset = make_dataset([qa("<image>\nWhat color?"), late_image], max_length=700)
    assert dataset.dropped == [1] and len(dataset) == 1
    assert "truncating would cut an image or every answer" in caplog.text


def test_nothing_fits_is_an_error(make_dataset):
    with pytest.raises(DataValidationError, match="no record fits model_max_length=100 .*the shortest needs 6"):
        make_dataset([qa("<image>\nWhat color?")], max_length=100)


def test_jsonl_multi_image_and_text_only_records(make_dataset, train_data):
    records = [
        qa("<image> and <image>: same background?", image=[IMAGE, "images/train_1.png"]),
        TEXT_ONLY_RECORDS[0],
        qa("<image>\nWhat color?"),
    ]
    dataset = make_dataset(records, max_length=2048, suffix=".jsonl")
    samples = [dataset[i] for i in range(3)]
    assert len(samples[0]["images"]) == 2 and samples[0]["image_sizes"] == [(48, 48), (48, 48)]
    assert "images" not in samples[1]
    batch = DataCollatorForSupervisedDataset(pad_token_id=3)(samples)
    assert batch["images"].shape == (3, 3, 48, 48)  # row-major: sample 0's two images, then sample 2's
    assert batch["image_sizes"] == [(48, 48)] * 3
    lengths = [len(s["input_ids"]) for s in samples]
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert batch["input_ids"].shape == batch["labels"].shape == (3, max(lengths))
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()


def test_text_only_batch_has_no_images():
    samples = [{"input_ids": torch.tensor([1, 5, 6]), "labels": torch.tensor([-100, -100, 6])}]
    assert "images" not in DataCollatorForSupervisedDataset(pad_token_id=0)(samples)


def test_anyres_images_are_crop_stacks_and_cost_their_real_token_count(make_dataset, tiny_llava_anyres):
    model = LlavaLlamaForCausalLM.from_pretrained(tiny_llava_anyres)
    model.config.matryoshka_vis_token_scale = [576, 36]
    budget = VisualTokenBudget.from_model(model)
    columns, rows = anyres_grid_shape((48, 48), model.config.image_grid_pinpoints, 48)
    assert budget.depends_on_size and budget.tokens((48, 48)) == model.num_visual_tokens(576, (48, 48))
    dataset = make_dataset([qa("<image>\nWhat color?")], max_length=4096, model=model)
    sample = dataset[0]
    assert sample["images"][0].shape == (1 + columns * rows, 3, 48, 48)
    assert dataset.lengths[0] == expanded_length(sample["input_ids"].tolist(), [budget.tokens((48, 48))])


def test_dropping_every_image_sample_is_an_error(make_dataset):
    """LLaVA's default --model_max_length 512 is shorter than one image at 576 tokens: say so, train nothing."""
    with pytest.raises(DataValidationError, match="no record with an image fits model_max_length=512"):
        make_dataset([qa("<image>\nWhat color?"), TEXT_ONLY_RECORDS[0]], max_length=512)


# -- data a careless user hands `python -m llava.train.train`: refused before step 1, naming file, record and id --


def train_on(tiny_llava_pad, train_data, data: Path, out: Path) -> None:
    main(run_args(tiny_llava_pad, data, train_data.folder, out, max_steps=2))


GOOD = json.dumps(qa("<image>\nWhat color?"))
FRENCH = json.dumps(qa("<image>\nQuelle couleur?", answer="rouge foncé"), ensure_ascii=False)
BAD_FILES = {
    "empty list": (".json", b"[]", "holds no records; expected a JSON list of records"),
    "empty jsonl": (".jsonl", b"\n\n", "holds no records; expected one record per line"),
    "latin-1 json": (
        ".json",
        f"[{GOOD},\n {FRENCH}]".encode("latin-1"),
        r"not UTF-8 text: byte 0xe9 at line 2, column \d+; save the file as UTF-8",
    ),
    "latin-1 jsonl": (
        ".jsonl",
        f"{GOOD}\n{GOOD}\n{FRENCH}\n".encode("latin-1"),
        r"not UTF-8 text: byte 0xe9 at line 3, column \d+",
    ),
    "truncated json": (
        ".json",
        json.dumps([qa("<image>\nWhat color?")] * 3, indent=1).encode()[:-40],
        r"not valid JSON at line \d+, column \d+: .*; the file ends in the middle of the data",
    ),
    "truncated jsonl": (
        ".jsonl",
        f"{GOOD}\n{GOOD}\n{GOOD[:30]}".encode(),
        r"line 3 \(record 2\) is not valid JSON \(the last line: cut off while being written or copied\?\)",
    ),
    "json lines named .json": (
        ".json",
        f"{GOOD}\n{GOOD}\n".encode(),
        r"not valid JSON at line 2, column 1: Extra data; .*for JSON Lines \(one record per line\) name the file .jsonl",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_unreadable_data_file_is_refused_naming_it(tiny_llava_pad, train_data, tmp_path, case):
    suffix, content, message = BAD_FILES[case]
    data = tmp_path / f"train{suffix}"
    data.write_bytes(content)
    with pytest.raises(DataValidationError, match=rf"^{re.escape(str(data))}: {message}"):
        train_on(tiny_llava_pad, train_data, data, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before anything was trained or written


def test_data_path_that_is_a_folder_is_refused(tiny_llava_pad, train_data, tmp_path):
    with pytest.raises(DataValidationError, match=rf"--data_path {re.escape(str(tmp_path))} is not a file"):
        train_on(tiny_llava_pad, train_data, tmp_path, tmp_path / "out")


@pytest.fixture(scope="module")
def corrupt(train_data) -> dict[str, str]:
    """Files a dataset can hold instead of its images, under the image folder; name → what PIL says."""
    png = (train_data.folder / IMAGE).read_bytes()
    bad = train_data.folder / "bad"
    bad.mkdir(exist_ok=True)
    (bad / "truncated.png").write_bytes(png[: len(png) // 2])
    (bad / "zeroed.png").write_bytes(png[:60] + bytes(40) + png[100:])  # broken chunk checksum
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "notes.txt").write_text("not an image")
    (bad / "page.png").write_text("<html><body>404 Not Found</body></html>")
    return {
        "bad/truncated.png": r"OSError: Truncated File Read",
        "bad/zeroed.png": r"SyntaxError: broken PNG file",
        "bad/empty.jpg": r"UnidentifiedImageError: cannot identify image file",
        "bad/notes.txt": r"UnidentifiedImageError: cannot identify image file",
        "bad/page.png": r"UnidentifiedImageError: cannot identify image file",
    }


def test_corrupt_images_and_non_images_are_refused_before_step_1(tiny_llava_pad, train_data, corrupt, tmp_path):
    records = [qa("<image>\nWhat color?")] + [qa("<image>\nWhat?", image=path) for path in corrupt]
    records.append(qa("<image> and <image>: same?", image=[IMAGE, "bad/notes.txt"]))
    data = write_json(tmp_path / "train.json", records)
    with pytest.raises(DataValidationError) as error:
        train_on(tiny_llava_pad, train_data, data, tmp_path / "out")
    lines = str(error.value).splitlines()
    assert lines[0] == f"{data}: {len(corrupt) + 1} bad record(s):"
    for line, (index, (path, reason)) in zip(lines[1:], enumerate(corrupt.items(), start=1)):
        image = re.escape(str(train_data.folder / path))
        assert re.fullmatch(
            rf"  record {index} \(id='<image>\\nWhat\?'\): {image} is not a readable image \({reason}.*\)", line
        )
    assert re.match(r"  record 6 \(id='<image> and <image>: same\?'\): .*notes.txt is not a readable image", lines[-1])
    assert not (tmp_path / "out").exists()


def test_many_bad_records_are_summarised(tiny_llava_pad, train_data, corrupt, tmp_path):
    records = [qa("<image>\nWhat color?")] + [
        {**qa("<image>\nWhat?", image="bad/empty.jpg"), "id": f"r{i}"} for i in range(30)
    ]
    data = write_json(tmp_path / "train.json", records)
    with pytest.raises(DataValidationError) as error:
        train_on(tiny_llava_pad, train_data, data, tmp_path / "out")
    lines = str(error.value).splitlines()
    assert lines[0] == f"{data}: 30 bad record(s):"
    assert [line.split(":")[0] for line in lines[1:-1]] == [f"  record {i} (id='r{i - 1}')" for i in range(1, 21)]
    assert lines[-1] == "  ... and 10 more"


def test_jpeg_cut_off_in_its_pixel_data_names_the_record_when_decoded(make_dataset, train_data, corrupt):
    """`verify` reads a JPEG's headers only: a download cut off in the pixel data shows when the sample is loaded."""
    path = train_data.folder / "bad/cut.jpg"
    Image.open(train_data.folder / IMAGE).convert("RGB").resize((256, 256)).save(path, quality=95)
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    dataset = make_dataset([qa("<image>\nWhat color?"), {**qa("<image>\nWhat?", image="bad/cut.jpg"), "id": "x7"}])
    with pytest.raises(
        DataValidationError, match=r"record 1 \(id='x7'\): cannot read image .*cut.jpg: image file is truncated"
    ):
        dataset[1]
