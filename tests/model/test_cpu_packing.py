"""`prepare_for_inference`: oneDNN-packed linear layers give the same model, for inference on CPU."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from llava.constants import IMAGE_TOKEN_INDEX
from llava.model.builder import load_pretrained_model
from llava.model.cpu_packing import (
    PACK_MIN_WEIGHTS,
    PackedLinear,
    cpu_packing_available,
    pack_linear_weights,
    prepare_for_inference,
)
from llava.testing import build_tiny_llava

pytestmark = pytest.mark.skipif(not cpu_packing_available(), reason="torch built without oneDNN")

PIXELS = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))


def load(path, cpu_weight_prepack: bool | None = None, **kwargs):
    """As the inference entry points load: `load_pretrained_model`, then `prepare_for_inference`."""
    tokenizer, model, _, _ = load_pretrained_model(str(path), None, "tiny", device="cpu", **kwargs)
    prepare_for_inference(model, cpu_weight_prepack)
    return tokenizer, model


@pytest.fixture(scope="module")
def plain_and_packed(tiny_llava_pad):
    tokenizer, plain = load(tiny_llava_pad, cpu_weight_prepack=False)
    _, packed = load(tiny_llava_pad, cpu_weight_prepack=True)
    return tokenizer, plain, packed


def prompt_ids(tokenizer) -> torch.Tensor:
    ids = (
        tokenizer("USER: ").input_ids
        + [IMAGE_TOKEN_INDEX]
        + tokenizer(" Hi ASSISTANT:", add_special_tokens=False).input_ids
    )
    return torch.tensor([ids, ids])


def test_every_linear_layer_of_tower_projector_and_language_model_is_packed(plain_and_packed):
    _, plain, packed = plain_and_packed
    linear_names = {name for name, module in plain.named_modules() if type(module) is nn.Linear}
    packed_names = {name for name, module in packed.named_modules() if isinstance(module, PackedLinear)}
    assert packed_names == linear_names
    assert any(".vision_tower." in n for n in packed_names) and "lm_head" in packed_names
    assert any("mm_projector" in n for n in packed_names) and any(".layers.0.mlp" in n for n in packed_names)
    assert not any(type(m) is nn.Linear for m in packed.modules())


@pytest.mark.parametrize("scale", [576, 36, 1])
def test_packed_model_gives_the_same_logits_at_every_budget(plain_and_packed, scale):
    tokenizer, plain, packed = plain_and_packed
    ids = prompt_ids(tokenizer)
    with torch.inference_mode():
        expected = plain(input_ids=ids, images=PIXELS, matryoshka_vis_token_scale=scale).logits
        got = packed(input_ids=ids, images=PIXELS, matryoshka_vis_token_scale=scale).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_packed_model_generates_the_same_tokens(plain_and_packed):
    tokenizer, plain, packed = plain_and_packed
    ids = prompt_ids(tokenizer)[:1]
    kwargs = dict(images=PIXELS[:1], matryoshka_vis_token_scale=9, max_new_tokens=12, do_sample=False)
    with torch.inference_mode():
        expected = plain.generate(ids, **kwargs)
        got = packed.generate(ids, **kwargs)
    assert got.tolist() == expected.tolist()


def test_saving_a_packed_model_writes_the_plain_checkpoint(plain_and_packed, tmp_path):
    _, plain, packed = plain_and_packed
    packed.save_pretrained(tmp_path / "copy")
    saved = load_file(tmp_path / "copy" / "model.safetensors")
    reference = plain.state_dict()
    assert saved.keys() == reference.keys()
    for key, value in saved.items():
        torch.testing.assert_close(value, reference[key], rtol=0, atol=0, msg=key)


def test_packed_layer_refuses_to_backpropagate():
    layer = PackedLinear(nn.Linear(8, 4))
    with pytest.raises(RuntimeError, match="cannot backpropagate"):
        layer(torch.randn(3, 8, requires_grad=True))
    with pytest.raises(TypeError, match="float32 CPU inputs"):
        layer(torch.randn(3, 8, dtype=torch.float64))


def test_tied_weights_stay_tied_and_unpacked():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8))
    model[2].weight = model[0].weight
    assert pack_linear_weights(model) == 1
    assert isinstance(model[1], PackedLinear) and type(model[0]) is nn.Linear and model[2].weight is model[0].weight


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(dtype=torch.bfloat16), "dtype=torch.bfloat16"),
        (dict(load_8bit=True), "bitsandbytes quantisation"),
        (dict(torch_compile=True), "torch.compile"),
    ],
)
def test_prepack_where_it_cannot_apply_is_a_clear_error(tiny_llava_pad, kwargs, message):
    with pytest.raises(ValueError, match=message):
        load(tiny_llava_pad, cpu_weight_prepack=True, **kwargs)


def test_the_loader_returns_a_plain_model_and_refuses_the_old_packing_keyword(tiny_llava_pad):
    _, model, _, _ = load_pretrained_model(str(tiny_llava_pad), None, "tiny", device="cpu")
    assert not any(isinstance(module, PackedLinear) for module in model.modules())
    with pytest.raises(TypeError, match="call llava.model.cpu_packing.prepare_for_inference"):
        load_pretrained_model(str(tiny_llava_pad), None, "tiny", device="cpu", cpu_weight_prepack=True)


@pytest.fixture(scope="module")
def wide_mlp_llava(tmp_path_factory, tiny_clip):
    """A tiny model whose MLP weights (64 × 8192) reach PACK_MIN_WEIGHTS and nothing else does."""
    assert 64 * 8192 == PACK_MIN_WEIGHTS
    return build_tiny_llava(
        tmp_path_factory.mktemp("wide") / "llava-wide-mlp", vision_tower=tiny_clip, intermediate_size=8192
    )


def test_default_packs_only_the_layers_where_packing_pays(wide_mlp_llava):
    tokenizer, default = load(wide_mlp_llava)
    _, plain = load(wide_mlp_llava, cpu_weight_prepack=False)
    packed_names = {name for name, module in default.named_modules() if isinstance(module, PackedLinear)}
    mlp_names = {
        f"model.layers.{i}.mlp.{proj}"
        for i in range(default.config.num_hidden_layers)
        for proj in ("gate_proj", "up_proj", "down_proj")
    }
    assert packed_names == mlp_names
    assert not any(isinstance(module, PackedLinear) for module in plain.modules())
    ids = prompt_ids(tokenizer)
    with torch.inference_mode():
        expected = plain(input_ids=ids, images=PIXELS, matryoshka_vis_token_scale=9).logits
        got = default(input_ids=ids, images=PIXELS, matryoshka_vis_token_scale=9).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_a_prepared_model_refuses_to_be_cast_and_the_plain_one_trains(wide_mlp_llava):
    _, model = load(wide_mlp_llava)
    with pytest.raises(ValueError, match="move or cast the model before prepare_for_inference"):
        model.to(torch.bfloat16)
    _, plain, _, _ = load_pretrained_model(str(wide_mlp_llava), None, "wide", device="cpu")
    plain.train()
    ids = torch.tensor([[1, 5, 6, 7]])
    plain(input_ids=ids, labels=ids).loss.backward()
    assert plain.model.layers[0].mlp.gate_proj.weight.grad is not None
    assert plain.to(torch.bfloat16).dtype == torch.bfloat16


def test_default_does_not_pack_where_packing_cannot_apply(wide_mlp_llava):
    _, model = load(wide_mlp_llava, dtype=torch.bfloat16)
    assert not any(isinstance(module, PackedLinear) for module in model.modules())
    assert model.model.layers[0].mlp.gate_proj.weight.dtype == torch.bfloat16


def test_a_packed_model_refuses_to_move_or_cast_by_name():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    pack_linear_weights(model)
    x = torch.randn(2, 8)
    with torch.inference_mode():
        expected = model(x)
    for move in (lambda: model.to(torch.bfloat16), lambda: model.double(), lambda: model.to("meta")):
        with pytest.raises(ValueError, match="cannot become .* or call it with cpu_weight_prepack=False"):
            move()
    model.to("cpu")  # no change of device or dtype: allowed, and the layers still work
    model.float()
    with torch.inference_mode():
        torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
