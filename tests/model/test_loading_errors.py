"""Careless checkpoints and devices, as a user hits them: every one is an error that names the problem.

A checkpoint missing a tensor or its projector, holding a tensor the model has not, or of a model type
that is not ours; a device that is not on this machine. None of them may load with random values or
fall back to another device in silence.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from llava.model.builder import check_device, load_pretrained_model
from llava.testing import build_tiny_llava


def edit_weights(src: Path, dst: Path, drop: tuple[str, ...] = (), add: dict | None = None) -> Path:
    """A copy of `src` with the tensors whose names start with `drop` removed and `add` added."""
    shutil.copytree(src, dst)
    state = load_file(dst / "model.safetensors")
    state = {k: v for k, v in state.items() if not k.startswith(drop)} | (add or {})
    save_file(state, dst / "model.safetensors", {"format": "pt"})
    return dst


def edit_config(src: Path, dst: Path, **fields: object) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config.update(fields)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_a_missing_language_model_tensor_is_named(tiny_llava_pad, tmp_path):
    path = edit_weights(tiny_llava_pad, tmp_path / "no-down-proj", drop=("model.layers.1.mlp.down_proj.weight",))
    with pytest.raises(ValueError, match=r"lacks weights the model needs: model\.layers\.1\.mlp\.down_proj\.weight$"):
        load_pretrained_model(str(path), None, "no-down-proj", device="cpu")


def test_a_missing_projector_is_named_and_loads_only_when_asked_for(tiny_llava_pad, tmp_path):
    path = edit_weights(tiny_llava_pad, tmp_path / "no-projector", drop=("model.mm_projector.",))
    names = ", ".join(f"model.mm_projector.{i}.{p}" for i in (0, 2) for p in ("bias", "weight"))
    with pytest.raises(ValueError, match=rf"lacks weights the model needs: {names}\. .*fresh_projector=True"):
        load_pretrained_model(str(path), None, "no-projector", device="cpu")
    _, model, _, _ = load_pretrained_model(str(path), None, "no-projector", device="cpu", fresh_projector=True)
    reference = load_file(tiny_llava_pad / "model.safetensors")
    assert not torch.equal(model.model.mm_projector[0].weight, reference["model.mm_projector.0.weight"])
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight, reference["model.layers.0.mlp.up_proj.weight"])


def test_fresh_projector_does_not_excuse_other_missing_weights(tiny_llava_pad, tmp_path):
    path = edit_weights(tiny_llava_pad, tmp_path / "no-norm", drop=("model.mm_projector.", "model.norm.weight"))
    with pytest.raises(ValueError, match=r"lacks weights the model needs: model\.norm\.weight$"):
        load_pretrained_model(str(path), None, "no-norm", device="cpu", fresh_projector=True)


def test_an_unexpected_tensor_is_named(tiny_llava_pad, tmp_path):
    path = edit_weights(tiny_llava_pad, tmp_path / "extra", add={"model.mm_resampler.weight": torch.zeros(2, 2)})
    with pytest.raises(
        ValueError, match=r"holds weights that LlavaLlamaForCausalLM does not have: model\.mm_resampler"
    ):
        load_pretrained_model(str(path), None, "extra", device="cpu")


def test_a_model_type_that_is_not_ours_is_refused_by_name(tiny_llava_pad, tmp_path):
    path = edit_config(tiny_llava_pad, tmp_path / "bert", model_type="bert")
    with pytest.raises(ValueError, match=r"model_type='bert', which M3 does not load.*llava_llama"):
        load_pretrained_model(str(path), None, "bert", device="cpu")


def test_a_llava_config_of_neither_llava_layout_is_refused(tiny_llava_pad, tmp_path):
    path = edit_config(tiny_llava_pad, tmp_path / "bare-llava", model_type="llava")
    config = json.loads((path / "config.json").read_text())
    del config["mm_vision_tower"]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"model_type='llava', which M3 does not load.*mm_vision_tower"):
        load_pretrained_model(str(path), None, "bare-llava", device="cpu")


def test_context_length_is_the_checkpoint_max_position_embeddings(tiny_clip, tmp_path):
    path = build_tiny_llava(tmp_path / "short-context", vision_tower=tiny_clip, max_position_embeddings=1024)
    *_, context = load_pretrained_model(str(path), None, "short-context", device="cpu")
    assert context == 1024


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_cuda_on_a_machine_without_it_is_an_error_naming_the_devices_here(tiny_llava_pad):
    for device in ("cuda", "cuda:1"):
        with pytest.raises(ValueError, match=rf"device='{device}' is not available on this machine; .* cpu"):
            load_pretrained_model(str(tiny_llava_pad), None, "tiny", device=device)
    with pytest.raises(ValueError, match="device='cuda:0' is not available"):
        load_pretrained_model(str(tiny_llava_pad), None, "tiny", device="cpu", device_map={"": "cuda:0"})
    with pytest.raises(ValueError, match="device=0 is not available"):
        load_pretrained_model(str(tiny_llava_pad), None, "tiny", device="cpu", device_map={"lm_head": 0, "": "cpu"})


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="checks a machine without MPS")
def test_mps_on_a_machine_without_it_is_an_error_naming_the_devices_here(tiny_llava_pad):
    with pytest.raises(ValueError, match=r"device='mps' is not available on this machine; the devices here are cpu"):
        load_pretrained_model(str(tiny_llava_pad), None, "tiny", device="mps")


def test_a_device_name_that_is_no_device_is_an_error():
    with pytest.raises(ValueError, match="device='gpu' is not a device name; the devices here are cpu"):
        check_device("gpu")
    check_device("cpu")
