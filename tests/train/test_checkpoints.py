"""A run killed while writing a checkpoint resumes from the last complete one and ends where an uninterrupted run ends.

The kill is a real `kill -9` of a real `python -m llava.train.train` process, caught while the
checkpoint is being written; folders cut off by other tools or older versions (partial in each way
a kill leaves them) are skipped with a warning naming them.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import REPO, generate_from, kill_while_saving, logged_losses, run_args, torchrun, train_command

from llava.train.checkpoints import UNFINISHED_DIR, incomplete_reason, last_complete_checkpoint
from llava.train.train import main

SCALES = "1,9,36,144,576"
STEPS = 6


def m3_args(model: Path, train_data, output_dir: Path, **flags: object) -> list[str]:
    """6 records (4 with an image, 2 text-only), batch 2, a checkpoint every step: the resume test's run."""
    flags = {"max_steps": STEPS, "save_strategy": "steps", "save_steps": 1, "group_by_modality_length": True,
             "matryoshka_vis_token_scale": SCALES, **flags}  # fmt: skip
    return run_args(model, train_data.mixed, train_data.folder, output_dir, **flags)


@pytest.fixture(scope="module")
def uninterrupted(tiny_llava_pad, train_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    main(m3_args(tiny_llava_pad, train_data, out))
    return out


def assert_same_weights(run: Path, reference: Path, file: str = "model.safetensors") -> None:
    expected, got = load_file(reference / file), load_file(run / file)
    assert sorted(got) == sorted(expected)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-6, rtol=0, msg=key)


@pytest.mark.parametrize("once", [None, "optimizer.pt"], ids=["folder-created", "optimizer-written"])
def test_kill_9_while_saving_then_rerun_resumes_from_the_last_complete_checkpoint(
    tiny_llava_pad, train_data, uninterrupted, tmp_path, caplog, once
):
    out = tmp_path / "run"
    argv = m3_args(tiny_llava_pad, train_data, out, save_total_limit=1)  # the one checkpoint must survive
    log = tmp_path / "killed.log"
    # As many threads as this process trains with, so the runs do the same arithmetic.
    killed = kill_while_saving(train_command(argv), out, log, once=once, threads=torch.get_num_threads())
    # Caught half-way (just the folder, or weights and optimizer with the rest to come), and left unpublished.
    assert once is None or {"model.safetensors", once} <= set(killed.files), killed.files
    assert not (out / f"checkpoint-{killed.step}").exists()
    assert (out / UNFINISHED_DIR / f"checkpoint-{killed.step}").is_dir()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [f"checkpoint-{killed.step - 1}"]
    assert last_complete_checkpoint(out) == str(out / f"checkpoint-{killed.step - 1}")

    with caplog.at_level(logging.WARNING, logger="llava"):
        trainer = main(argv)
    assert f"{UNFINISHED_DIR} (checkpoint-{killed.step}): a checkpoint save that did not finish" in caplog.text
    assert trainer.state.global_step == STEPS
    assert [e["step"] for e in logged_losses(out)] == list(range(1, STEPS + 1))
    assert not (out / UNFINISHED_DIR).exists()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [f"checkpoint-{STEPS}"]
    assert incomplete_reason(out / f"checkpoint-{STEPS}") is None
    assert_same_weights(out, uninterrupted)
    optimizer = f"checkpoint-{STEPS}/optimizer.pt"
    reference = torch.load(uninterrupted / optimizer, weights_only=True)["state"]
    torch.testing.assert_close(torch.load(out / optimizer, weights_only=True)["state"], reference, atol=1e-6, rtol=0)


def partial_folders(complete: Path, output_dir: Path) -> dict[str, str]:
    """Folders cut off the ways a kill cuts them, from a complete checkpoint; name → expected reason."""
    (output_dir / "checkpoint-3").mkdir()  # killed right after creating the folder
    truncated = shutil.copytree(complete, output_dir / "checkpoint-4")
    state = truncated / "trainer_state.json"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # killed while writing the last file
    no_state = shutil.copytree(complete, output_dir / "checkpoint-5")
    for name in ("trainer_state.json", "rng_state.pth", "scheduler.pt"):
        (no_state / name).unlink(missing_ok=True)  # killed while writing the optimizer
    return {
        "checkpoint-5": "has no trainer_state.json (the Trainer writes it last)",
        "checkpoint-4": "has a truncated or unreadable trainer_state.json",
        "checkpoint-3": "is empty",
    }


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_partial_checkpoint_folders_are_skipped_with_a_warning(
    tiny_llava_pad, train_data, uninterrupted, tmp_path, caplog, kind
):
    lora = {"lora_enable": True, "lora_r": 8, "lora_alpha": 16, "mm_projector_lr": 2e-4} if kind == "lora" else {}
    if kind == "full":
        reference = uninterrupted
    else:
        reference = tmp_path / "reference"
        main(m3_args(tiny_llava_pad, train_data, reference, **lora))
    out = tmp_path / "run"
    shutil.copytree(reference / "checkpoint-2", out / "checkpoint-2")
    reasons = partial_folders(reference / "checkpoint-2", out)
    with caplog.at_level(logging.WARNING, logger="llava"):
        trainer = main(m3_args(tiny_llava_pad, train_data, out, **lora))
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping")]
    assert skipped == [f"skipping {out / name}: it {reason}; probably cut off while being written"
                       for name, reason in reasons.items()]  # fmt: skip
    assert trainer.state.global_step == STEPS
    assert [e["step"] for e in logged_losses(out)] == list(range(1, STEPS + 1))  # 1-2 restored, 3-6 trained
    assert all(incomplete_reason(out / f"checkpoint-{s}") is None for s in range(2, STEPS + 1))  # replaced
    if kind == "full":
        assert_same_weights(out, reference)
    else:
        assert_same_weights(out, reference, "adapter_model.safetensors")
        expected = torch.load(reference / "non_lora_trainables.bin", weights_only=True)
        resumed = torch.load(out / "non_lora_trainables.bin", weights_only=True)
        torch.testing.assert_close(resumed, expected, atol=1e-6, rtol=0)


def test_incomplete_resume_from_checkpoint_is_an_error(tiny_llava_pad, train_data, uninterrupted, tmp_path):
    partial = tmp_path / "checkpoint-4"
    shutil.copytree(uninterrupted / "checkpoint-4", partial)
    (partial / "trainer_state.json").unlink()
    argv = m3_args(tiny_llava_pad, train_data, tmp_path / "run", resume_from_checkpoint=partial)
    with pytest.raises(ValueError, match=rf"--resume_from_checkpoint {partial} has no trainer_state.json .*incomplete"):
        main(argv)


def write_state(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 4, "log_history": []}))


FOLDERS = {
    "no weights": ({"config.json": "{}"}, "has no model weights"),
    "lora adapter config only": ({"adapter_config.json": "{}", "non_lora_trainables.bin": ""}, "has no model weights"),
    "shard missing": (
        {
            "model.safetensors.index.json": json.dumps(
                {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
            ),
            "model-00001-of-00002.safetensors": "",
        },
        "lacks weight shards listed in model.safetensors.index.json: model-00002-of-00002.safetensors",
    ),  # fmt: skip
    "zero-3 shards without latest": (
        {"model.safetensors": "", "global_step4/zero_pp_rank_0_mp_rank_00_optim_states.pt": ""},
        r"has DeepSpeed state \(global_step4\) but no 'latest' file",
    ),
    "zero-2 latest naming a missing step": (
        {"model.safetensors": "", "latest": "global_step4", "global_step2/mp_rank_00_model_states.pt": ""},
        r"has a 'latest' file naming 'global_step4', which is not there \(found: \['global_step2'\]\)",
    ),
    "projector pretraining": ({"mm_projector.bin": "", "config.json": "{}"}, None),
    "zero-3 complete": (
        {
            "model.safetensors": "",
            "latest": "global_step4\n",
            "global_step4/zero_pp_rank_0_mp_rank_00_optim_states.pt": "",
        },
        None,
    ),
}


@pytest.mark.parametrize("case", sorted(FOLDERS))
def test_incomplete_reason_names_what_is_missing(tmp_path, case):
    """The checks past trainer_state.json, for folders damaged after the fact (shards deleted to save space, ...)."""
    files, reason = FOLDERS[case]
    folder = tmp_path / "checkpoint-4"
    write_state(folder)
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(content)
    found = incomplete_reason(folder)
    assert found is None if reason is None else re.fullmatch(reason + ".*", found or ""), found


@pytest.mark.slow
@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_deepspeed_run_killed_while_saving_resumes_from_the_last_complete_checkpoint(
    tiny_llava_pad, train_data, tmp_path, zero
):
    """2 ranks on CPU: `kill -9` of torchrun and both workers mid-save, plus a partial ZeRO folder
    (one rank's shards, no `latest`, no trainer_state.json) where the killed checkpoint would be."""
    out = tmp_path / zero
    argv = m3_args(tiny_llava_pad, train_data, out, max_steps=4, deepspeed=REPO / f"scripts/{zero}.json")
    killed = kill_while_saving(train_command(argv, nproc=2), out, tmp_path / "killed.log")
    assert not (out / f"checkpoint-{killed.step}").exists()
    previous = out / f"checkpoint-{killed.step - 1}"
    assert (previous / "latest").read_text() == f"global_step{killed.step - 1}"
    partial = shutil.copytree(
        previous / f"global_step{killed.step - 1}", out / f"checkpoint-{killed.step}" / f"global_step{killed.step}"
    )
    for shard in partial.glob("*rank_1*"):
        shard.unlink()

    result = torchrun(argv)
    assert f"{UNFINISHED_DIR} (checkpoint-{killed.step}): a checkpoint save that did not finish" in result.stderr
    assert f"skipping {out / f'checkpoint-{killed.step}'}: it has no trainer_state.json" in result.stderr
    assert [e["step"] for e in logged_losses(out)] == [1, 2, 3, 4]
    for step in range(killed.step, 5):
        assert incomplete_reason(out / f"checkpoint-{step}") is None
        assert len(list((out / f"checkpoint-{step}" / f"global_step{step}").glob("*optim_states.pt"))) == 2
    generate_from(out, train_data.folder / "images/train_0.png")
