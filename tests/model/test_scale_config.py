"""Budgets in the config and at the model's door: the trained list and the default, read from and written
to the released checkpoints' `matryoshka_vis_token_scale`, and ints only inside `forward`/`generate`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from llava.constants import IMAGE_TOKEN_INDEX
from llava.model.builder import load_pretrained_model
from llava.model.language_model.llava_llama import LlavaConfig

PIXELS = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(0))


def with_config(checkpoint: Path, folder: Path, **fields: object) -> Path:
    """A copy of `checkpoint` whose config.json has `fields` set (None removes a key)."""
    path = shutil.copytree(checkpoint, folder)
    config = json.loads((path / "config.json").read_text())
    for key, value in fields.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (path / "config.json").write_text(json.dumps(config))
    return path


def logits(model, tokenizer, scale: int | None) -> torch.Tensor:
    ids = (
        tokenizer("USER: ").input_ids
        + [IMAGE_TOKEN_INDEX]
        + tokenizer(" hi ASSISTANT:", add_special_tokens=False).input_ids
    )
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids]), images=PIXELS, matryoshka_vis_token_scale=scale).logits


def test_released_list_is_the_trained_budgets_and_is_written_back_under_its_key(tmp_path: Path) -> None:
    config = LlavaConfig(matryoshka_vis_token_scale=[1, 9, 36, 144, 576], matryoshka_scale_weights=[1, 1, 1, 2, 3])
    assert (config.matryoshka_train_scales, config.matryoshka_default_scale) == ([1, 9, 36, 144, 576], None)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    # The original code iterates this list when it trains: the key keeps its name and its meaning.
    assert saved["matryoshka_vis_token_scale"] == [1, 9, 36, 144, 576]
    assert "matryoshka_train_scales" not in saved and saved["matryoshka_default_scale"] is None
    reloaded = LlavaConfig.from_pretrained(tmp_path)
    assert reloaded.matryoshka_train_scales == [1, 9, 36, 144, 576]
    assert reloaded.matryoshka_scale_weights == [1, 1, 1, 2, 3]


def test_an_int_under_the_released_key_is_the_default_budget(tiny_llava_pad: Path, tmp_path: Path) -> None:
    path = with_config(tiny_llava_pad, tmp_path / "ckpt", matryoshka_vis_token_scale=36)
    tokenizer, model, _, _ = load_pretrained_model(str(path), None, "ckpt", device="cpu")
    assert (model.config.matryoshka_train_scales, model.config.matryoshka_default_scale) == (None, 36)
    assert model.default_scale == 36
    torch.testing.assert_close(logits(model, tokenizer, None), logits(model, tokenizer, 36))
    assert logits(model, tokenizer, None).shape != logits(model, tokenizer, 576).shape


def test_the_default_field_wins_over_the_largest_trained_budget(tiny_llava_pad: Path, tmp_path: Path) -> None:
    path = with_config(tiny_llava_pad, tmp_path / "ckpt", matryoshka_default_scale=9)
    _, model, _, _ = load_pretrained_model(str(path), None, "ckpt", device="cpu")
    assert model.config.matryoshka_train_scales == [576, 144, 36, 9, 1] and model.default_scale == 9
    # No default and no trained list: the full grid.
    path = with_config(tiny_llava_pad, tmp_path / "plain", matryoshka_vis_token_scale=None)
    _, model, _, _ = load_pretrained_model(str(path), None, "plain", device="cpu")
    assert model.config.matryoshka_train_scales is None and model.default_scale == 576


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"matryoshka_vis_token_scale": "1,9,36"}, "must be a list of ints .* an int .* or null, got '1,9,36'"),
        ({"matryoshka_vis_token_scale": [9, "36"]}, r"must be a list of ints, got \[9, '36'\]"),
        ({"matryoshka_default_scale": 9.5}, "matryoshka_default_scale must be an int or null, got 9.5"),
        ({"matryoshka_scale_weights": [1, 2]}, r"2 weights for 5 scales \[576, 144, 36, 9, 1\]"),
    ],
)
def test_bad_budgets_in_a_config_are_refused_at_load(tiny_llava_pad: Path, tmp_path: Path, fields, message) -> None:
    path = with_config(tiny_llava_pad, tmp_path / "bad", **fields)
    with pytest.raises(ValueError, match=message):
        load_pretrained_model(str(path), None, "bad", device="cpu")


@pytest.mark.parametrize("scale", ["36", torch.tensor(36), 36.0, ["36"]])
def test_forward_and_generate_take_ints_only(tiny_llava_pad: Path, scale) -> None:
    tokenizer, model, _, _ = load_pretrained_model(str(tiny_llava_pad), None, "tiny", device="cpu")
    kinds = r"must be an int(, a list of ints \(one per sample\) or None)?, got"
    with pytest.raises(TypeError, match=kinds):
        logits(model, tokenizer, scale)
    with pytest.raises(TypeError, match=kinds):
        model.generate(torch.tensor([[1, IMAGE_TOKEN_INDEX]]), images=PIXELS, matryoshka_vis_token_scale=scale)
