"""The shipped M3-Shapes model under the plugin: our engine's answers on held-out questions at every budget.

Its word-level tokenizer turns `<image>` into `<unk>`s, so the prompts go in as our ids (`token_request`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from vllm_helpers import SCALES, VLLM_MISSING, Reference, chat_prompt, engine, greedy, token_request

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.data import shapes

pytest.importorskip("vllm", reason=VLLM_MISSING)
pytestmark = pytest.mark.slow

SHIPPED = Path(__file__).resolve().parents[2] / "playground" / "shapes-m3-tiny"
NUM_IMAGES = 6


def test_held_out_answers_match_our_engine_at_every_budget(tmp_path: Path) -> None:
    reference = Reference(SHIPPED)
    template = reference.model.config.conv_template
    records = shapes.generate_split(tmp_path, "test", NUM_IMAGES, shapes.DEFAULT_SEEDS["test"], 96)
    cases = []
    for record in records:
        question = record["conversations"][0]["value"].replace(DEFAULT_IMAGE_TOKEN, "").strip()
        image = Image.open(tmp_path / record["image"]).convert("RGB")
        cases += [(chat_prompt(question, template), image, scale) for scale in SCALES]
    # Compiled, as vLLM runs by default: its start-up profiling then builds prompts from the dummy inputs.
    with engine(SHIPPED, max_model_len=1024, enforce_eager=False) as llm:
        outputs = llm.generate([token_request(reference, p, image, s) for p, image, s in cases], greedy(3))
    for (prompt, image, scale), out in zip(cases, outputs):
        assert len(out.prompt_token_ids) == len(reference.prompt_ids(prompt)) - 1 + scale
    mismatches = [
        (prompt[-60:], scale, list(out.outputs[0].token_ids), expected)
        for (prompt, image, scale), out in zip(cases, outputs)
        if list(out.outputs[0].token_ids) != (expected := reference.generate(prompt, image, scale, max_new_tokens=3))
    ]
    assert len(cases) >= 5 * 4 * NUM_IMAGES
    assert not mismatches, f"{len(mismatches)} of {len(cases)} differ: {mismatches[:3]}"
