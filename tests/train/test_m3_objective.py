"""The M3 objective: mean of the per-budget losses, one vision-tower pass per step, per-budget logging."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from train_helpers import run_args, write_json
from transformers import AutoTokenizer

from llava.model import LlavaLlamaForCausalLM, MatryoshkaCausalLMOutput
from llava.train.data import DataCollatorForSupervisedDataset, LazySupervisedDataset, VisualTokenBudget
from llava.train.model_setup import load_image_processor
from llava.train.preprocess import ConversationTemplate
from llava.train.train import build_trainer, parse_args

SCALES = [1, 9, 36, 144, 576]


@pytest.fixture(scope="module")
def model_and_batch(tiny_llava_pad: Path, train_data, tmp_path_factory):
    """The tiny model in training mode and a real batch: 3 image samples and a text-only one."""
    model = LlavaLlamaForCausalLM.from_pretrained(tiny_llava_pad)
    model.config.matryoshka_vis_token_scale = SCALES
    model.config.validate_multimodal()
    model.train()
    records = json.loads(train_data.mixed.read_text())
    data = write_json(tmp_path_factory.mktemp("m3") / "batch.json", records[:3] + records[-1:])
    dataset = LazySupervisedDataset(
        data,
        str(train_data.folder),
        AutoTokenizer.from_pretrained(tiny_llava_pad),
        ConversationTemplate.from_name("v1"),
        load_image_processor(str(tiny_llava_pad), model.config),
        model.config,
        VisualTokenBudget.from_model(model),
        max_length=1024,
    )
    batch = DataCollatorForSupervisedDataset(pad_token_id=3)([dataset[i] for i in range(len(dataset))])
    return model, batch


def test_m3_loss_and_gradient_are_the_mean_over_single_budgets(model_and_batch):
    model, batch = model_and_batch
    projector = model.get_model().mm_projector[0].weight
    model.zero_grad()
    output = model(**batch)
    assert isinstance(output, MatryoshkaCausalLMOutput)
    output.loss.backward()
    m3_grad = projector.grad.clone()
    model.zero_grad()
    one_at_a_time = {s: model(**batch, matryoshka_vis_token_scale=s).loss for s in SCALES}
    mean = torch.stack(list(one_at_a_time.values())).mean()
    mean.backward()
    for scale in SCALES:
        torch.testing.assert_close(output.scale_losses[scale], one_at_a_time[scale], atol=1e-5, rtol=0)
    torch.testing.assert_close(output.loss, mean, atol=1e-5, rtol=0)
    torch.testing.assert_close(m3_grad, projector.grad, atol=1e-6, rtol=1e-4)
    assert len({round(v.item(), 4) for v in one_at_a_time.values()}) > 1  # the budgets really differ
    model.zero_grad()


def test_m3_loss_weights(model_and_batch):
    model, batch = model_and_batch
    weights = [0.0, 1.0, 0.0, 1.0, 2.0]
    model.config.matryoshka_scale_weights = weights
    try:
        output = model(**batch)
    finally:
        model.config.matryoshka_scale_weights = None
    expected = sum(w * output.scale_losses[s] for s, w in zip(SCALES, weights)) / sum(weights)
    torch.testing.assert_close(output.loss, expected, atol=1e-6, rtol=0)


def test_one_tower_pass_per_forward_and_per_budget_losses_logged(tiny_llava_pad, train_data, tmp_path):
    accumulation = 2
    argv = run_args(
        tiny_llava_pad,
        train_data.images,
        train_data.folder,
        tmp_path / "out",
        max_steps=3,
        gradient_accumulation_steps=accumulation,
        matryoshka_vis_token_scale=",".join(map(str, SCALES)),
    )
    trainer = build_trainer(*parse_args(argv))
    calls = []
    hook = trainer.model.get_vision_tower().register_forward_hook(lambda *_: calls.append(1))
    try:
        trainer.train()
    finally:
        hook.remove()
    assert len(calls) == 3 * accumulation  # one per forward, whatever the number of budgets
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 3
    for entry in logs:
        per_scale = [entry[f"loss_{s}"] for s in SCALES]
        assert all(torch.isfinite(torch.tensor(per_scale)))
        assert sum(per_scale) / len(per_scale) == pytest.approx(entry["loss"], rel=1e-4)
