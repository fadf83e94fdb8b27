"""Real 2-process DeepSpeed runs on CPU (DS_ACCELERATOR=cpu, gloo, torchrun): ZeRO-3, ZeRO-2, LoRA + merge.

Each run trains the tiny model for a few steps on generated M3-Shapes data, saves in the released
format, and the result is loaded back with `load_pretrained_model` and generates.
"""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import REPO, generate_from, logged_losses, run_args, torchrun

SCALES = "1,9,36,144,576"
IMAGE = "images/train_0.png"

pytestmark = pytest.mark.slow


def assert_learns(output_dir, steps: int, scales: bool = True) -> list[dict]:
    logs = logged_losses(output_dir)
    assert [entry["step"] for entry in logs] == list(range(1, steps + 1))
    assert all(math.isfinite(entry["loss"]) for entry in logs)
    assert logs[-1]["loss"] < logs[0]["loss"], [entry["loss"] for entry in logs]
    if scales:
        assert all(f"loss_{s}" in entry for entry in logs for s in (1, 9, 36, 144, 576))
    return logs


def tower_keys(state: dict) -> list[str]:
    return [k for k in state if ".vision_tower." in k]


def test_zero3_m3_run(tiny_llava_pad, train_data, tmp_path):
    """The M3 recipe in small: ZeRO-3 from a LLaVA checkpoint, all five budgets, vision tower unfrozen.

    The data mixes image and text-only records, so some steps give one rank a text-only batch while
    the other holds images: both must still run the tower (ZeRO-3 gathers its weights collectively).
    """
    out = tmp_path / "zero3"
    torchrun(run_args(tiny_llava_pad, train_data.mixed, train_data.folder, out, max_steps=6,
                      deepspeed=REPO / "scripts/zero3.json", save_strategy="steps", save_steps=3,
                      group_by_modality_length=True, unfreeze_mm_vision_tower=True, mm_vision_tower_lr=1e-3,
                      matryoshka_vis_token_scale=SCALES))  # fmt: skip
    assert_learns(out, steps=6)
    assert (out / "checkpoint-3" / "global_step3").is_dir()  # DeepSpeed's own state, for resuming
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llava_llama" and config["architectures"] == ["LlavaLlamaForCausalLM"]
    assert config["unfreeze_mm_vision_tower"] is True and config["use_cache"] is True
    state = load_file(out / "model.safetensors")  # gathered from the ZeRO-3 shards
    initial = load_file(tiny_llava_pad / "model.safetensors")
    assert sorted(state) == sorted(initial)  # same names as the released format (no vision_model.vision_model)
    assert all(state[k].shape == initial[k].shape for k in state)
    assert not torch.equal(state[tower_keys(state)[0]], initial[tower_keys(state)[0]])
    generate_from(out, train_data.folder / IMAGE)


def test_zero2_run(tiny_llava_pad, train_data, tmp_path):
    out = tmp_path / "zero2"
    torchrun(run_args(tiny_llava_pad, train_data.images, train_data.folder, out, max_steps=4,
                      deepspeed=REPO / "scripts/zero2.json", matryoshka_vis_token_scale=SCALES))  # fmt: skip
    assert_learns(out, steps=4)
    assert tower_keys(load_file(out / "model.safetensors")) == []  # frozen tower: loaded from mm_vision_tower
    generate_from(out, train_data.folder / IMAGE)


def test_zero3_from_plain_llm_loads_tower_and_projector_into_shards(tiny_llm, tiny_clip, train_data, tmp_path):
    """Tower weights (from --vision_tower) and the pretrained projector are written into ZeRO-3 partitions."""
    torch.manual_seed(0)
    projector = {"model.mm_projector.0.weight": torch.randn(64, 32), "model.mm_projector.0.bias": torch.zeros(64),
                 "model.mm_projector.2.weight": torch.randn(64, 64) / 8, "model.mm_projector.2.bias": torch.zeros(64)}  # fmt: skip
    torch.save(projector, tmp_path / "mm_projector.bin")
    out = tmp_path / "zero3-llm"
    torchrun(run_args(tiny_llm, train_data.images, train_data.folder, out, max_steps=3,
                      deepspeed=REPO / "scripts/zero3.json", vision_tower=tiny_clip, mm_projector_type="mlp2x_gelu",
                      mm_vision_select_layer=-2, pretrain_mm_mlp_adapter=tmp_path / "mm_projector.bin",
                      unfreeze_mm_vision_tower=True, mm_vision_tower_lr=0.0, mm_projector_lr=0.0,
                      matryoshka_vis_token_scale=SCALES))  # fmt: skip
    state = load_file(out / "model.safetensors")
    clip = load_file(tiny_clip / "model.safetensors")
    prefix = "model.vision_tower.vision_tower.vision_model."
    assert sorted(k[len(prefix) :] for k in tower_keys(state)) == sorted(clip)
    for key, value in clip.items():  # at lr 0 the saved tower is exactly what was loaded
        assert torch.equal(state[prefix + key], value), key
    for key, value in projector.items():
        assert torch.equal(state[key], value), key
    generate_from(out, train_data.folder / IMAGE)


def test_zero3_lora_run_then_merge(tiny_llava_pad, train_data, tmp_path):
    out = tmp_path / "lora"
    torchrun(run_args(tiny_llava_pad, train_data.images, train_data.folder, out, max_steps=4,
                      deepspeed=REPO / "scripts/zero3.json", lora_enable=True, lora_r=8, lora_alpha=16,
                      mm_projector_lr=2e-4, matryoshka_vis_token_scale=SCALES))  # fmt: skip
    assert_learns(out, steps=4)
    extra = torch.load(out / "non_lora_trainables.bin", weights_only=True)
    assert sorted(extra) == [f"model.mm_projector.{i}.{p}" for i in (0, 2) for p in ("bias", "weight")]
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["target_modules"] and not any("vision" in m or "projector" in m for m in adapter["target_modules"])

    spec = importlib.util.spec_from_file_location("merge_lora_weights", REPO / "scripts/merge_lora_weights.py")
    merge = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(merge)
    merged = tmp_path / "merged"
    merge.main(["--model-path", str(out), "--model-base", str(tiny_llava_pad), "--save-model-path", str(merged),
                "--dtype", "float32"])  # fmt: skip
    state, base = load_file(merged / "model.safetensors"), load_file(tiny_llava_pad / "model.safetensors")
    assert not torch.equal(
        state["model.layers.0.self_attn.q_proj.weight"], base["model.layers.0.self_attn.q_proj.weight"]
    )
    torch.testing.assert_close(state["model.mm_projector.0.weight"], extra["model.mm_projector.0.weight"])
    generate_from(merged, train_data.folder / IMAGE)
