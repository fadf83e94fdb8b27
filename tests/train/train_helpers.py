"""Helpers shared by the training tests: argv for tiny runs, torchrun on CPU, reading the logs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from llava.train.checkpoints import UNFINISHED_DIR

REPO = Path(__file__).resolve().parents[2]

TEXT_ONLY_RECORDS = [
    {
        "id": "text_0",
        "conversations": [{"from": "human", "value": "how many shapes?"}, {"from": "gpt", "value": "two"}],
    },
    {"id": "text_1", "conversations": [{"from": "human", "value": "left or right?"}, {"from": "gpt", "value": "left"}]},
]


def write_json(path: Path, records: list) -> Path:
    path.write_text(json.dumps(records, indent=1))
    return path


def run_args(model: Path, data: Path, folder: Path, output_dir: Path, *extra: str, **flags: object) -> list[str]:
    """argv for `llava.train.train`: tiny, CPU, 1e-3, logging every step; `flags` add/override `--name value`."""
    base: dict[str, object] = {
        "model_name_or_path": model,
        "version": "v1",
        "data_path": data,
        "image_folder": folder,
        "output_dir": output_dir,
        "per_device_train_batch_size": 2,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "report_to": "none",
        "save_strategy": "no",
        "model_max_length": 1024,
        "use_cpu": True,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
        "seed": 0,
    }
    base.update(flags)
    argv = [arg for name, value in base.items() for arg in (f"--{name}", str(value))]
    return argv + list(extra)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def training_env(threads: int = 1) -> dict[str, str]:
    """Environment of a training subprocess: DeepSpeed's CPU accelerator, `threads` per process, offline."""
    return {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "OMP_NUM_THREADS": str(threads),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": str(REPO),
    }


def train_command(argv: list[str], nproc: int = 1) -> list[str]:
    """`python -m llava.train.train ...`, or under `torchrun --nproc_per_node N` on CPU (gloo) when nproc > 1."""
    if nproc == 1:
        return [sys.executable, "-m", "llava.train.train", *argv]
    return [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}",
        "-m", "llava.train.train", *argv, "--ddp_backend", "gloo",
    ]  # fmt: skip


def torchrun(argv: list[str], nproc: int = 2, timeout: int = 400) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node N -m llava.train.train ...` on CPU (DeepSpeed's CPU accelerator, gloo)."""
    command = train_command(argv, nproc)
    result = subprocess.run(command, cwd=REPO, env=training_env(), capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(
            f"training failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
        )
    return result


@dataclass(frozen=True)
class KilledSave:
    step: int
    """N of the `checkpoint-N` being written when the run was killed."""
    files: list[str]
    """What the unfinished checkpoint held at that moment (paths relative to it)."""


def kill_while_saving(
    command: list[str], output_dir: Path, log: Path, once: str | None = None, threads: int = 1, timeout: float = 600
) -> KilledSave:
    """Run `command` (training that saves every step) and `kill -9` it while it writes a checkpoint.

    The whole process tree is stopped and killed (torchrun's workers run in sessions of their own).
    When a checkpoint appears under `_unfinished_checkpoints/`, the tree is stopped (SIGSTOP); then,
    with every process stopped, it is let run in slices of half a millisecond until the checkpoint
    holds the file `once` (if given), and killed (SIGKILL) there unless the save has been published
    meanwhile, in which case it goes on to the next save. Checkpoint 1 is always let through, so
    there is a complete one to resume from.
    """
    unfinished = output_dir / UNFINISHED_DIR
    deadline = time.monotonic() + timeout
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=REPO, env=training_env(threads), stdout=out, stderr=out)
        try:
            let_through = 1
            while process.poll() is None and time.monotonic() < deadline:
                saving = [step for step in _unfinished_steps(unfinished) if step > let_through]
                if saving:
                    killed = _kill_mid_save(process, unfinished / f"checkpoint-{max(saving)}", output_dir, once)
                    if killed is not None:
                        return killed
                    let_through = max(saving)
                time.sleep(0.002)
        finally:
            if process.poll() is None:
                _signal_tree(_process_tree(process.pid), signal.SIGKILL)
                process.wait()
    raise AssertionError(f"the run was never caught writing a checkpoint (exit {process.returncode}):\n"
                         f"{log.read_text()[-4000:]}")  # fmt: skip


def _kill_mid_save(process: subprocess.Popen, staged: Path, output_dir: Path, once: str | None) -> KilledSave | None:
    """Stop the tree, step it until `staged` holds `once`, kill it there; None if the save finished first."""
    tree = _process_tree(process.pid)
    _signal_tree(tree, signal.SIGSTOP)
    _wait_until_stopped(tree)
    while not (output_dir / staged.name).exists() and process.poll() is None:
        if once is None or (staged / once).exists():
            files = sorted(str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file())
            _signal_tree(tree, signal.SIGKILL)
            process.wait()
            psutil.wait_procs(tree, timeout=30)
            return KilledSave(int(staged.name.split("-")[1]), files)
        _signal_tree(tree, signal.SIGCONT)
        time.sleep(0.0005)
        _signal_tree(tree, signal.SIGSTOP)
        _wait_until_stopped(tree)
    _signal_tree(tree, signal.SIGCONT)
    return None


def _unfinished_steps(unfinished: Path) -> list[int]:
    """Steps whose checkpoint is being written."""
    try:
        return [int(name.split("-")[1]) for name in os.listdir(unfinished) if name.startswith("checkpoint-")]
    except FileNotFoundError:
        return []


def _process_tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _signal_tree(tree: list[psutil.Process], sig: signal.Signals) -> None:
    for process in tree:
        try:
            process.send_signal(sig)
        except psutil.NoSuchProcess:
            pass


def _wait_until_stopped(tree: list[psutil.Process], timeout: float = 10.0) -> None:
    """Signals arrive asynchronously: wait until every process really is stopped."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(_status(p) in (psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE, None) for p in tree):
            return
        time.sleep(0.001)
    raise AssertionError(f"processes {[p.pid for p in tree]} did not stop")


def _status(process: psutil.Process) -> str | None:
    try:
        return process.status()
    except psutil.NoSuchProcess:
        return None


def logged_losses(output_dir: Path) -> list[dict]:
    """Per-step training logs (with `loss`, and `loss_<scale>` under M3) from trainer_state.json."""
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return [entry for entry in state["log_history"] if "loss" in entry]


def generate_from(model_path: Path, image: Path, model_base: Path | None = None, scales=(576, 9)) -> list:
    """Load a saved run with `load_pretrained_model` and greedily generate a few tokens per budget."""
    import torch
    from PIL import Image

    from llava.conversation import get_conv_template
    from llava.mm_utils import process_images, tokenizer_image_token
    from llava.model.builder import load_pretrained_model

    tokenizer, model, processor, _ = load_pretrained_model(
        str(model_path), None if model_base is None else str(model_base), model_path.name, device="cpu"
    )
    conv = get_conv_template(model.config.conv_template or "v1")
    conv.append_message(conv.roles[0], "<image>\nWhat color is the background?")
    conv.append_message(conv.roles[1], None)
    input_ids = tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt")[None]
    picture = Image.open(image).convert("RGB")
    pixels = process_images([picture], processor, model.config)
    outputs = []
    with torch.inference_mode():
        for scale in scales:
            new = model.generate(
                input_ids,
                images=pixels,
                image_sizes=[picture.size],
                matryoshka_vis_token_scale=scale,
                max_new_tokens=3,
                do_sample=False,
            )
            assert new.ndim == 2 and 1 <= new.shape[1] <= 3
            outputs.append(new)
    return outputs
