"""Training starts from an original-format LLaVA checkpoint (`model_type: "llava"`, as finetune.sh starts
from liuhaotian/llava-v1.5-7b) and saves ours; a LoRA run over one loads back over it."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import generate_from, logged_losses, run_args

from llava.model.builder import load_pretrained_model
from llava.testing import save_as_hf_llava, save_as_original_llava
from llava.train.train import main

SCALES = "1,9,36,144,576"
IMAGE = "images/train_0.png"


@pytest.fixture(scope="module")
def original(tiny_llava_pad, tmp_path_factory):
    return save_as_original_llava(tiny_llava_pad, tmp_path_factory.mktemp("original") / "llava-v1.5-7b")


def test_original_llava_checkpoint_trains_a_step_and_saves_as_llava_llama(original, train_data, tmp_path):
    out = tmp_path / "m3"
    main(run_args(original, train_data.images, train_data.folder, out, max_steps=1, matryoshka_vis_token_scale=SCALES))
    (log,) = logged_losses(out)
    assert all(math.isfinite(log[f"loss_{s}"]) for s in (1, 9, 36, 144, 576))
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llava_llama" and config["architectures"] == ["LlavaLlamaForCausalLM"]
    assert config["matryoshka_vis_token_scale"] == [1, 9, 36, 144, 576]
    before, after = load_file(original / "model.safetensors"), load_file(out / "model.safetensors")
    assert sorted(before) == sorted(after)  # the frozen tower stays out, as in the original checkpoint
    assert not torch.equal(before["model.mm_projector.0.weight"], after["model.mm_projector.0.weight"])
    generate_from(out, train_data.folder / IMAGE)


def test_lora_run_over_an_original_llava_checkpoint_loads_over_it(original, train_data, tmp_path):
    out = tmp_path / "lora"
    main(run_args(original, train_data.images, train_data.folder, out, max_steps=1, lora_enable=True, lora_r=8,
                  lora_alpha=16, matryoshka_vis_token_scale=SCALES))  # fmt: skip
    assert json.loads((out / "config.json").read_text())["model_type"] == "llava_llama"
    generate_from(out, train_data.folder / IMAGE, model_base=original)


def test_a_transformers_llava_checkpoint_is_refused_as_a_start_with_the_way_to_convert_it(
    tiny_llava_pad, train_data, tmp_path
):
    tokenizer, model, image_processor, _ = load_pretrained_model(str(tiny_llava_pad), None, "tiny", device="cpu")
    hf = save_as_hf_llava(model, tokenizer, image_processor, tmp_path / "llava-1.5-7b-hf")
    with pytest.raises(ValueError, match=r"transformers' LLaVA layout \(llava-hf\).*save it in the M3 format first"):
        main(run_args(hf, train_data.images, train_data.folder, tmp_path / "run", max_steps=1))
