"""Token ids and training labels equal to the original M3 code's, for every template and `legacy` setting.

The fixture (tests/fixtures/tokenization/original_ids.json) was produced once by
tests/fixtures/make_tokenization_fixture.py running the original code (github.com/mu-cai/matryoshka-mm) on
transformers 4.36.2 with the slow sentencepiece LlamaTokenizer, the setup the released checkpoints were
trained with. The tokenizer is a small Llama-style sentencepiece BPE model with byte fallback, saved three
times: `tokenizer_config.json` with `"legacy": true`, `"legacy": false` and without the key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer, Qwen2Tokenizer

from llava.conversation import SeparatorStyle, conv_templates
from llava.mm_utils import tokenizer_image_token
from llava.model.builder import load_tokenizer
from llava.testing import build_tiny_tokenizer
from llava.train.preprocess import ConversationTemplate, preprocess

FIXTURES = Path(__file__).parent / "fixtures" / "tokenization"
ORIGINAL = json.loads((FIXTURES / "original_ids.json").read_text(encoding="utf-8"))
VARIANTS = list(ORIGINAL["header"]["variants"])


@pytest.fixture(scope="module", params=VARIANTS)
def variant(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def tokenizer(variant: str) -> Any:
    return load_tokenizer(str(FIXTURES / variant))


@pytest.fixture(scope="module")
def training_tokenizer(variant: str) -> Any:
    """As llava.train opens it: right padding, pad = unk (the original's choice, which its labels depend on)."""
    tok = load_tokenizer(str(FIXTURES / variant), model_max_length=2048, padding_side="right")
    tok.pad_token = tok.unk_token
    return tok


def _report(mismatches: list[str], total: int) -> str:
    return f"{len(mismatches)} of {total} differ from the original:\n" + "\n".join(mismatches[:8])


def test_fixture_covers_every_template_and_the_edge_texts():
    """Guards the fixture itself: a regenerated one must still hold what this module promises."""
    prompted = {case["template"] for case in ORIGINAL["prompts"] if "template" in case}
    assert prompted == set(conv_templates) - {"qwen", "chatml"}  # the original has no Qwen template
    # Labels for every template the original has a preprocess_* function for (its v0 fallback is FastChat's).
    labelled = {case["template"] for case in ORIGINAL["labels"]}
    own_function = (SeparatorStyle.PLAIN, SeparatorStyle.LLAMA_2, SeparatorStyle.MPT)
    assert labelled == {
        name
        for name in prompted
        if conv_templates[name].sep_style in own_function or conv_templates[name].version.startswith("v1")
    }
    texts = " ".join(case["prompt"] for case in ORIGINAL["prompts"])
    for edge in ("  ", " <image>", "<image> ", "</s> ", "</s>U", "12345", "Привет", "中文", "🙂"):
        assert edge in texts, f"no prompt in the fixture holds {edge!r}"


def test_tokenizer_encodes_like_the_original(tokenizer, variant):
    cases = ORIGINAL["encode"]
    mismatches = [
        f"{case['text']!r}: ours {ours} original {case['input_ids'][variant]}"
        for case in cases
        if (ours := tokenizer(case["text"]).input_ids) != case["input_ids"][variant]
    ]
    assert not mismatches, _report(mismatches, len(cases))


def test_prompt_ids_equal_the_original(tokenizer, variant):
    cases = ORIGINAL["prompts"]
    mismatches = [
        f"{case.get('template', 'raw')} {case['prompt'][-80:]!r}: first difference at {_first_difference(ours, want)}"
        for case in cases
        if (ours := tokenizer_image_token(case["prompt"], tokenizer)) != (want := case["input_ids"][variant])
    ]
    assert not mismatches, _report(mismatches, len(cases))


def test_templates_lay_out_the_original_prompts():
    cases = [case for case in ORIGINAL["prompts"] if "template" in case]
    mismatches = []
    for case in cases:
        conv = conv_templates[case["template"]].copy()
        for i, message in enumerate(case["messages"]):
            conv.append_message(conv.roles[i % 2], message)
        if conv.get_prompt() != case["prompt"]:
            mismatches.append(f"{case['template']}: ours {conv.get_prompt()!r}\noriginal {case['prompt']!r}")
    assert not mismatches, _report(mismatches, len(cases))


def test_training_ids_and_labels_equal_the_original(training_tokenizer, variant):
    """Where the original could not place the turns (its warning), it masked the whole sample: ids only."""
    mismatches = []
    for case in ORIGINAL["labels"]:
        original = case["original"][variant]
        template = ConversationTemplate.from_name(case["template"])
        input_ids, labels = preprocess(case["conversations"], template, training_tokenizer, case["num_images"])
        where = f"{case['template']} ({len(case['conversations'])} turns, {case['num_images']} images)"
        if input_ids != original["input_ids"]:
            mismatches.append(
                f"{where}: input ids, first difference at {_first_difference(input_ids, original['input_ids'])}"
            )
        elif original["warning"] is None and labels != original["labels"]:
            mismatches.append(f"{where}: labels, first difference at {_first_difference(labels, original['labels'])}")
    assert not mismatches, _report(mismatches, len(ORIGINAL["labels"]))


def test_the_original_could_not_train_only_the_mpt_layout():
    """The cases whose labels are not compared above: MPT-style templates, built for tokenizers without BOS."""
    warned = {
        case["template"] for case in ORIGINAL["labels"] for original in case["original"].values() if original["warning"]
    }
    assert warned == {name for name, conv in conv_templates.items() if conv.sep_style == SeparatorStyle.MPT}


def test_batches_encode_like_single_texts(tokenizer):
    """Batched calls (as the dataset's length count makes them) take the same path as single ones."""
    texts = [case["text"] for case in ORIGINAL["encode"]]
    assert tokenizer(texts).input_ids == [tokenizer(text).input_ids for text in texts]


def test_decoding_gives_the_text_back(tokenizer):
    texts = [
        "  two leading spaces",
        "double  spaces",
        " ",
        "Привет, мир!",
        "中文测试",
        "emoji 🙂🚀 end",
        "tab\tnew\nline",
    ]
    for text in texts:
        assert tokenizer.decode(tokenizer(text).input_ids, skip_special_tokens=True) == text


def test_legacy_given_to_the_loader_wins_over_the_config():
    tokenizer = load_tokenizer(str(FIXTURES / "legacy-absent"), legacy=False)
    for case in ORIGINAL["encode"]:
        assert tokenizer(case["text"]).input_ids == case["input_ids"]["legacy-false"], case["text"]


def test_saved_tokenizer_is_a_stock_llama_checkpoint_with_the_same_ids(tokenizer, variant, tmp_path):
    """What training saves: a LlamaTokenizer with `legacy` written out, so no loader has to guess it."""
    tokenizer.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "LlamaTokenizer"
    assert config["legacy"] is (ORIGINAL["header"]["variants"][variant] is not False)
    assert (tmp_path / "tokenizer.model").read_bytes() == (FIXTURES / variant / "tokenizer.model").read_bytes()
    reloaded = load_tokenizer(str(tmp_path))
    for case in ORIGINAL["prompts"]:
        assert tokenizer_image_token(case["prompt"], reloaded) == case["input_ids"][variant], case["prompt"]


def _tiny_byte_level(path: Path) -> None:
    build_tiny_tokenizer(path)


def _tiny_qwen2(path: Path) -> None:
    backend = json.loads(build_tiny_tokenizer().backend_tokenizer.to_str())["model"]
    merges = [tuple(merge) for merge in backend["merges"]]
    Qwen2Tokenizer(vocab=backend["vocab"], merges=merges, eos_token="</s>", pad_token="<pad>").save_pretrained(path)


def _byte_level_declared_llama(path: Path) -> None:
    """A Llama-3-style checkpoint: tokenizer_class says LlamaTokenizer, but there is no sentencepiece model."""
    build_tiny_tokenizer(path)
    config = json.loads((path / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "LlamaTokenizer"}))


@pytest.mark.parametrize("build", [_tiny_byte_level, _tiny_qwen2, _byte_level_declared_llama])
def test_other_tokenizers_load_as_before(build, tmp_path):
    build(tmp_path)
    ours, auto = load_tokenizer(str(tmp_path)), AutoTokenizer.from_pretrained(tmp_path)
    assert type(ours) is type(auto)
    texts = [case["text"] for case in ORIGINAL["encode"]] + [case["prompt"] for case in ORIGINAL["prompts"][:20]]
    assert ours(texts).input_ids == auto(texts).input_ids


def _first_difference(ours: list[int], original: list[int]) -> str:
    index = next((i for i, (a, b) in enumerate(zip(ours, original)) if a != b), min(len(ours), len(original)))
    return f"{index}: ours {ours[index : index + 6]} original {original[index : index + 6]}"
