"""Real in-process training runs of the tiny model: the start points, freezing, learning rates, resume, QLoRA."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import generate_from, logged_losses, run_args

from llava.train.train import main

SCALES = "1,9,36,144,576"


def tower_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Vision-tower tensors of a LLaVA state dict, named as in the CLIP checkpoint."""
    prefix = "model.vision_tower.vision_tower.vision_model."
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def test_pretrain_projector_then_finetune_m3_from_plain_llm(tiny_llm, tiny_clip, train_data, tmp_path):
    pretrain = tmp_path / "pretrain"
    common = dict(vision_tower=tiny_clip, mm_projector_type="mlp2x_gelu", mm_vision_select_layer=-2)
    main(run_args(tiny_llm, train_data.images, train_data.folder, pretrain, max_steps=2, version="plain",
                  tune_mm_mlp_adapter=True, **common))  # fmt: skip
    assert (pretrain / "mm_projector.bin").exists() and not (pretrain / "model.safetensors").exists()
    projector = torch.load(pretrain / "mm_projector.bin", weights_only=True)
    assert sorted(projector) == [f"model.mm_projector.{i}.{p}" for i in (0, 2) for p in ("bias", "weight")]
    config = json.loads((pretrain / "config.json").read_text())
    assert config["model_type"] == "llava_llama" and config["tune_mm_mlp_adapter"] is True
    assert config["conv_template"] == "plain"
    generate_from(pretrain, train_data.folder / "images/train_0.png", model_base=tiny_llm, scales=(576,))

    finetune = tmp_path / "finetune"
    main(run_args(tiny_llm, train_data.images, train_data.folder, finetune, max_steps=2,
                  pretrain_mm_mlp_adapter=pretrain / "mm_projector.bin", matryoshka_vis_token_scale=SCALES,
                  **common))  # fmt: skip
    config = json.loads((finetune / "config.json").read_text())
    assert config["architectures"] == ["LlavaLlamaForCausalLM"]
    assert config["matryoshka_vis_token_scale"] == [1, 9, 36, 144, 576] and config["conv_template"] == "v1"
    assert (finetune / "preprocessor_config.json").exists() and (finetune / "tokenizer.json").exists()
    state = load_file(finetune / "model.safetensors")
    assert not tower_weights(state)  # frozen tower: loaded from mm_vision_tower, as in released checkpoints
    assert not torch.equal(state["model.mm_projector.0.weight"], projector["model.mm_projector.0.weight"])
    generate_from(finetune, train_data.folder / "images/train_0.png")


@pytest.mark.parametrize("unfreeze", [False, True])
def test_vision_tower_trains_only_when_unfrozen(tiny_llava_pad, tiny_clip, train_data, tmp_path, unfreeze):
    out = tmp_path / "run"
    trainer = main(run_args(tiny_llava_pad, train_data.images, train_data.folder, out, max_steps=2,
                            unfreeze_mm_vision_tower=unfreeze, mm_vision_tower_lr=2e-3, mm_projector_lr=5e-4,
                            matryoshka_vis_token_scale=SCALES))  # fmt: skip
    clip = load_file(tiny_clip / "model.safetensors")
    trained = tower_weights(trainer.model.state_dict())
    changed = [k for k in clip if not torch.equal(clip[k], trained[k])]
    group_lrs = sorted({group["initial_lr"] for group in trainer.optimizer.param_groups})
    saved = tower_weights(load_file(out / "model.safetensors"))
    if unfreeze:
        assert len(changed) > len(clip) // 2
        assert all(p.requires_grad for p in trainer.model.get_vision_tower().parameters())
        assert group_lrs == [5e-4, 1e-3, 2e-3]
        assert sorted(saved) == sorted(clip) and all(torch.equal(saved[k], trained[k]) for k in saved)
    else:
        assert changed == []
        assert not any(p.requires_grad for p in trainer.model.get_vision_tower().parameters())
        assert group_lrs == [5e-4, 1e-3]
        assert saved == {}


def test_resume_after_interruption_reaches_the_same_weights(tiny_llava_pad, train_data, tmp_path):
    """6 records (4 with an image, 2 text-only), batch 2: 3 steps an epoch, so steps 3-4 cross an epoch."""

    def run(output_dir: Path):
        return main(run_args(tiny_llava_pad, train_data.mixed, train_data.folder, output_dir, max_steps=4,
                             save_strategy="steps", save_steps=2, group_by_modality_length=True,
                             matryoshka_vis_token_scale=SCALES))  # fmt: skip

    uninterrupted = tmp_path / "uninterrupted"
    run(uninterrupted)
    # A run killed after its step-2 checkpoint leaves exactly that folder behind; rerunning resumes from it.
    interrupted = tmp_path / "interrupted"
    shutil.copytree(uninterrupted / "checkpoint-2", interrupted / "checkpoint-2")
    trainer = run(interrupted)
    assert trainer.state.global_step == 4
    assert [e["step"] for e in logged_losses(interrupted)] == [1, 2, 3, 4]  # 1-2 restored, 3-4 trained
    expected, resumed = load_file(uninterrupted / "model.safetensors"), load_file(interrupted / "model.safetensors")
    assert sorted(expected) == sorted(resumed)
    for key in expected:
        torch.testing.assert_close(resumed[key], expected[key], atol=1e-6, rtol=0)
    first, second = logged_losses(uninterrupted), logged_losses(interrupted)
    assert [e["loss"] for e in second[2:]] == pytest.approx([e["loss"] for e in first[2:]], abs=1e-6)


@pytest.mark.parametrize("bits", [4, 8])
def test_qlora(tiny_llava_pad, train_data, tmp_path, bits):
    out = tmp_path / "qlora"
    trainer = main(run_args(tiny_llava_pad, train_data.images, train_data.folder, out, max_steps=2, bits=bits,
                            lora_enable=True, lora_r=8, lora_alpha=16, matryoshka_vis_token_scale=SCALES))  # fmt: skip
    quantised = {"Linear4bit": 4, "Linear8bitLt": 8}
    kinds = {type(m).__name__ for m in trainer.model.modules()}
    assert any(quantised.get(kind) == bits for kind in kinds), kinds
    projector = trainer.model.get_base_model().get_model().mm_projector[0]
    assert type(projector) is torch.nn.Linear  # kept in full precision
    assert {"adapter_config.json", "non_lora_trainables.bin", "config.json"} <= {p.name for p in out.iterdir()}
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in logged_losses(out))
    generate_from(out, train_data.folder / "images/train_0.png", model_base=tiny_llava_pad)


def test_anyres_m3_training(tiny_llava_anyres, train_data, tmp_path):
    out = tmp_path / "next"
    main(run_args(tiny_llava_anyres, train_data.images, train_data.folder, out, max_steps=2, model_max_length=4096,
                  matryoshka_vis_token_scale=SCALES, per_device_train_batch_size=1))  # fmt: skip
    logs = logged_losses(out)
    assert all(f"loss_{s}" in logs[0] for s in (1, 9, 36, 144, 576))
    assert "model.image_newline" in load_file(out / "model.safetensors")
    generate_from(out, train_data.folder / "images/train_0.png", scales=(36,))


def test_flags_that_cannot_work_are_rejected(tiny_llava_pad, train_data, tmp_path):
    with pytest.raises(ValueError, match="--bits 4 trains through LoRA only"):
        main(run_args(tiny_llava_pad, train_data.images, train_data.folder, tmp_path / "a", bits=4))
    with pytest.raises(ValueError, match="--mm_projector_type 'linear' differs from the checkpoint's 'mlp2x_gelu'"):
        main(run_args(tiny_llava_pad, train_data.images, train_data.folder, tmp_path / "b", mm_projector_type="linear"))
