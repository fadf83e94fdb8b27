"""Helpers shared by the training tests: argv for tiny runs, torchrun on CPU, reading the logs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

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


def torchrun(argv: list[str], nproc: int = 2, timeout: int = 400) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node N -m llava.train.train ...` on CPU (DeepSpeed's CPU accelerator, gloo)."""
    env = {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": str(REPO),
    }
    command = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}",
        "-m", "llava.train.train", *argv, "--ddp_backend", "gloo",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(
            f"training failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
        )
    return result


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
