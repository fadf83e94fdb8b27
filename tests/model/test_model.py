"""Model behaviour on tiny checkpoints: budgets, token counts, batching, placeholders, generation."""

from __future__ import annotations

import pytest
import torch

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.model.anyres import anyres_grid_shape
from llava.model.builder import load_pretrained_model
from llava.model.splice import splice_visual_tokens

SCALES = [576, 144, 36, 9, 1]


@pytest.fixture(scope="module")
def pad_model(tiny_llava_pad):
    tokenizer, model, image_processor, _ = load_pretrained_model(str(tiny_llava_pad), None, "llava-v1.5", device="cpu")
    return tokenizer, model


@pytest.fixture(scope="module")
def anyres_model(tiny_llava_anyres):
    tokenizer, model, _, _ = load_pretrained_model(str(tiny_llava_anyres), None, "llava-next", device="cpu")
    return tokenizer, model


def prompt(tokenizer, question: str = "What is in the image?", images: int = 1) -> list[int]:
    ids = tokenizer("USER: ").input_ids
    for _ in range(images):
        ids += [IMAGE_TOKEN_INDEX] + tokenizer("\n", add_special_tokens=False).input_ids
    return ids + tokenizer(f"{question} ASSISTANT:", add_special_tokens=False).input_ids


def anyres_pixels(model, image_size, seed=0):
    cols, rows = anyres_grid_shape(image_size, model.config.image_grid_pinpoints, 48)
    torch.manual_seed(seed)
    return torch.randn(1 + rows * cols, 3, 48, 48)


@pytest.mark.parametrize("scale", SCALES)
def test_pad_token_count_is_scale_plus_text(pad_model, scale):
    tokenizer, model = pad_model
    ids = prompt(tokenizer)
    out = model(input_ids=torch.tensor([ids]), images=torch.randn(1, 3, 48, 48), matryoshka_vis_token_scale=scale)
    assert out.logits.shape[1] == len(ids) - 1 + scale
    assert model.num_visual_tokens(scale) == scale


@pytest.mark.parametrize("scale", SCALES)
def test_anyres_square_image_costs_base_plus_crops_plus_newlines(anyres_model, scale):
    tokenizer, model = anyres_model
    ids = prompt(tokenizer)
    side = int(scale**0.5)
    expected = scale + 2 * side * (2 * side + 1)  # a square image on the 2x2 grid: 576 -> 2928, 9 -> 51
    assert model.num_visual_tokens(scale, (96, 96)) == expected
    out = model(
        input_ids=torch.tensor([ids]),
        images=[anyres_pixels(model, (96, 96))],
        image_sizes=[(96, 96)],
        matryoshka_vis_token_scale=scale,
    )
    assert out.logits.shape[1] == len(ids) - 1 + expected


def test_anyres_counts_match_spliced_length_for_wide_and_tall_images(anyres_model):
    tokenizer, model = anyres_model
    ids = prompt(tokenizer)
    for size in [(96, 48), (50, 130), (120, 70)]:
        for scale in (576, 36, 1):
            out = model(
                input_ids=torch.tensor([ids]),
                images=[anyres_pixels(model, size)],
                image_sizes=[size],
                matryoshka_vis_token_scale=scale,
            )
            assert out.logits.shape[1] == len(ids) - 1 + model.num_visual_tokens(scale, size), (size, scale)


@pytest.mark.parametrize("scale", [144, 36, 9, 1])
def test_visual_tokens_are_block_averages_of_the_full_grid(pad_model, scale):
    _, model = pad_model
    pixels = torch.randn(2, 3, 48, 48)
    encoded = model.encode_images(pixels)
    full = model.visual_tokens(encoded, [576, 576], None)
    pooled = model.visual_tokens(encoded, [scale, scale], None)
    for f, p in zip(full, pooled):
        k, block = int(scale**0.5), 24 // int(scale**0.5)
        grid = f.view(24, 24, -1)
        manual = torch.stack(
            [
                grid[i * block : (i + 1) * block, j * block : (j + 1) * block].mean(dim=(0, 1))
                for i in range(k)
                for j in range(k)
            ]
        )
        torch.testing.assert_close(p, manual)


def test_mixed_scale_batch_matches_each_sample_alone(pad_model):
    tokenizer, model = pad_model
    questions = ["What is in the image?", "Describe the picture.", "How many shapes?"]
    scales = [576, 9, 36]
    pixels = torch.randn(3, 3, 48, 48)
    rows = [prompt(tokenizer, q) for q in questions]
    width = max(map(len, rows))
    ids = torch.full((3, width), tokenizer.pad_token_id)
    mask = torch.zeros(3, width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    batched = model(input_ids=ids, attention_mask=mask, images=pixels, matryoshka_vis_token_scale=scales).logits
    for i, (r, s) in enumerate(zip(rows, scales)):
        alone = model(input_ids=torch.tensor([r]), images=pixels[i : i + 1], matryoshka_vis_token_scale=s).logits[0]
        torch.testing.assert_close(batched[i, : alone.shape[0]], alone, rtol=1e-4, atol=1e-5)


def test_left_padded_generation_matches_each_sample_alone(pad_model):
    tokenizer, model = pad_model
    rows = [prompt(tokenizer, "What is in the image?"), prompt(tokenizer, "Describe the picture in detail please.")]
    scales = [9, 144]
    pixels = torch.randn(2, 3, 48, 48)
    width = max(map(len, rows))
    ids = torch.full((2, width), tokenizer.pad_token_id)
    mask = torch.zeros(2, width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    kwargs = dict(max_new_tokens=6, do_sample=False, min_new_tokens=6, pad_token_id=tokenizer.pad_token_id)
    batched = model.generate(ids, attention_mask=mask, images=pixels, matryoshka_vis_token_scale=scales, **kwargs)
    for i, (r, s) in enumerate(zip(rows, scales)):
        alone = model.generate(torch.tensor([r]), images=pixels[i : i + 1], matryoshka_vis_token_scale=s, **kwargs)
        assert batched[i].tolist() == alone[0].tolist()


def test_generate_encodes_the_image_once(pad_model):
    tokenizer, model = pad_model
    calls = []
    handle = model.get_vision_tower().register_forward_hook(lambda *args: calls.append(1))
    try:
        out = model.generate(
            torch.tensor([prompt(tokenizer)]),
            images=torch.randn(1, 3, 48, 48),
            max_new_tokens=5,
            min_new_tokens=5,
            do_sample=False,
        )
    finally:
        handle.remove()
    assert out.shape == (1, 5)  # only the new tokens, as LLaVA returns them
    assert len(calls) == 1


def test_multiple_images_per_prompt_follow_their_placeholders(pad_model):
    tokenizer, model = pad_model
    ids = prompt(tokenizer, "Compare the two images.", images=2)
    pixels = torch.randn(2, 3, 48, 48)
    both = model(input_ids=torch.tensor([ids]), images=pixels, matryoshka_vis_token_scale=9).logits
    swapped = model(input_ids=torch.tensor([ids]), images=pixels.flip(0), matryoshka_vis_token_scale=9).logits
    assert both.shape[1] == len(ids) - 2 + 2 * 9
    assert not torch.allclose(both[0, -1], swapped[0, -1])


def test_text_only_prompt_runs_without_images(pad_model):
    tokenizer, model = pad_model
    ids = tokenizer("USER: Hello there. ASSISTANT:").input_ids
    out = model(input_ids=torch.tensor([ids])).logits
    assert out.shape[1] == len(ids)
    generated = model.generate(torch.tensor([ids]), max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert generated.shape == (1, 3)


def test_text_only_and_image_samples_share_a_batch(pad_model):
    tokenizer, model = pad_model
    with_image, text_only = prompt(tokenizer), tokenizer("USER: Hello there. ASSISTANT:").input_ids
    width = max(len(with_image), len(text_only))
    ids = torch.full((2, width), tokenizer.pad_token_id)
    mask = torch.zeros(2, width, dtype=torch.long)
    for i, r in enumerate([with_image, text_only]):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    pixels = torch.randn(1, 3, 48, 48)
    batched = model(input_ids=ids, attention_mask=mask, images=pixels, matryoshka_vis_token_scale=36).logits
    alone = model(input_ids=torch.tensor([text_only])).logits[0]
    torch.testing.assert_close(batched[1, : len(text_only)], alone, rtol=1e-4, atol=1e-5)


def test_config_list_of_trained_scales_means_full_budget_at_inference(pad_model):
    tokenizer, model = pad_model
    assert model.config.matryoshka_vis_token_scale == [576, 144, 36, 9, 1]
    ids = torch.tensor([prompt(tokenizer)])
    pixels = torch.randn(1, 3, 48, 48)
    default = model(input_ids=ids, images=pixels).logits
    full = model(input_ids=ids, images=pixels, matryoshka_vis_token_scale=576).logits
    torch.testing.assert_close(default, full)


def test_eval_forward_honours_the_scale(pad_model):
    tokenizer, model = pad_model
    ids = torch.tensor([prompt(tokenizer)])
    pixels = torch.randn(1, 3, 48, 48)
    a = model(input_ids=ids, images=pixels, matryoshka_vis_token_scale=9).logits
    b = model(input_ids=ids, images=pixels, matryoshka_vis_token_scale=1).logits
    assert a.shape[1] == b.shape[1] + 8


def test_invalid_scale_is_a_clear_error(pad_model):
    tokenizer, model = pad_model
    ids = torch.tensor([prompt(tokenizer)])
    with pytest.raises(
        ValueError, match=r"matryoshka_vis_token_scale=100 .*valid values: \[1, 4, 9, 16, 36, 64, 144, 576\]"
    ):
        model(input_ids=ids, images=torch.randn(1, 3, 48, 48), matryoshka_vis_token_scale=100)
    with pytest.raises(ValueError, match="one scale per sample"):
        model(input_ids=ids, images=torch.randn(1, 3, 48, 48), matryoshka_vis_token_scale=[9, 36])


def test_placeholder_without_image_is_a_clear_error(pad_model):
    tokenizer, model = pad_model
    ids = torch.tensor([prompt(tokenizer)])
    with pytest.raises(ValueError, match=r"1 <image> placeholder\(s\) but no images"):
        model(input_ids=ids)
    with pytest.raises(ValueError, match=r"2 <image> placeholder\(s\) \(sample 0: 2\) but only 1 image"):
        model(input_ids=torch.tensor([prompt(tokenizer, images=2)]), images=torch.randn(1, 3, 48, 48))


def test_more_images_than_placeholders_is_a_clear_error(pad_model):
    tokenizer, model = pad_model
    with pytest.raises(ValueError, match=r"2 image\(s\) were given but the prompt has only 1 <image> placeholder"):
        model(input_ids=torch.tensor([prompt(tokenizer)]), images=torch.randn(2, 3, 48, 48))


def test_wrong_image_resolution_is_a_clear_error(pad_model):
    tokenizer, model = pad_model
    with pytest.raises(ValueError, match=r"must have shape \(3, 48, 48\)"):
        model(input_ids=torch.tensor([prompt(tokenizer)]), images=torch.randn(1, 3, 64, 64))


def test_vectorised_splice_equals_a_naive_loop():
    torch.manual_seed(0)
    ids = torch.tensor([[5, IMAGE_TOKEN_INDEX, 6, 7, IMAGE_TOKEN_INDEX, 8], [9, 10, IMAGE_TOKEN_INDEX, 11, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    labels = ids.clone()
    embeds = torch.randn(2, 6, 3)
    feats = [torch.randn(4, 3), torch.randn(1, 3), torch.randn(9, 3)]
    for side in ("left", "right"):
        out = splice_visual_tokens(ids, mask, labels, embeds, feats, side)
        image_iter = iter(feats)
        for b in range(2):
            seq, lab = [], []
            for t in range(6):
                if not mask[b, t]:
                    continue
                if ids[b, t] == IMAGE_TOKEN_INDEX:
                    f = next(image_iter)
                    seq += list(f)
                    lab += [IGNORE_INDEX] * len(f)
                else:
                    seq.append(embeds[b, t])
                    lab.append(int(labels[b, t]))
            n = len(seq)
            row = out.attention_mask[b].nonzero().flatten()
            assert len(row) == n and (row[-1] - row[0] + 1) == n
            torch.testing.assert_close(out.inputs_embeds[b, row], torch.stack(seq))
            assert out.labels[b, row].tolist() == lab
            assert out.position_ids[b, row].tolist() == list(range(n))
            assert (row[0] == 0) if side == "right" else (row[-1] == out.attention_mask.shape[1] - 1)


def test_generate_projects_only_the_last_prompt_position_to_the_vocabulary(pad_model):
    """transformers' generate passes logits_to_keep=1 only when forward's signature names it."""
    tokenizer, model = pad_model
    rows = []
    handle = model.lm_head.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[1]))
    try:
        model.generate(
            torch.tensor([prompt(tokenizer)]), images=torch.randn(1, 3, 48, 48), max_new_tokens=2, min_new_tokens=2
        )
    finally:
        handle.remove()
    assert rows == [1, 1]
