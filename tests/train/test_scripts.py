"""The launch scripts pass only flags `llava.train.train` knows, and keep their global batch on any GPU count."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest
from train_helpers import REPO
from transformers import HfArgumentParser

from llava.train.arguments import DataArguments, ModelArguments, TrainingArguments

SCRIPTS = {
    "scripts/v1_5/pretrain.sh": 256,
    "scripts/v1_5/finetune.sh": 128,
    "scripts/v1_5/finetune_lora.sh": 128,
    "scripts/v1_5/finetune_task_lora.sh": 128,
    "scripts/v1_6/finetune_m3_next.sh": 128,
}


def launched_args(script: str, tmp_path: Path, num_gpus: int) -> list[str]:
    """Run the script with a `deepspeed` on PATH that prints its arguments instead of launching."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    launcher = bin_dir / "deepspeed"
    launcher.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    launcher.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "NUM_GPUS": str(num_gpus)}
    result = subprocess.run(["bash", script], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    return result.stdout.splitlines()


@pytest.mark.parametrize("script", sorted(SCRIPTS))
@pytest.mark.parametrize("num_gpus", [1, 8])
def test_script_flags_parse_and_global_batch_is_kept(script, num_gpus, tmp_path):
    args = launched_args(script, tmp_path, num_gpus)
    assert args[:4] == ["--num_gpus", str(num_gpus), "--module", "llava.train.train"]
    train_args = args[4:]
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    namespace, unknown = parser.parse_known_args(train_args)
    assert unknown == []
    assert namespace.per_device_train_batch_size * namespace.gradient_accumulation_steps * num_gpus == SCRIPTS[script]
    assert (REPO / namespace.deepspeed).is_file()
    if "pretrain" not in script:
        assert namespace.matryoshka_vis_token_scale == "1,9,36,144,576"


def test_m3_recipe(tmp_path):
    args = launched_args("scripts/v1_5/finetune.sh", tmp_path, 8)
    namespace, _ = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments)).parse_known_args(args[4:])
    assert namespace.model_name_or_path == "liuhaotian/llava-v1.5-7b"
    assert (namespace.learning_rate, namespace.num_train_epochs, namespace.model_max_length) == (2e-5, 1, 2048)
    assert namespace.weight_decay == 0 and namespace.deepspeed.endswith("zero3.json")
    assert namespace.unfreeze_mm_vision_tower is True and namespace.mm_vision_tower_lr == 2e-5


def test_uneven_gpu_count_is_refused(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "NUM_GPUS": "3"}
    result = subprocess.run(["bash", "scripts/v1_5/finetune.sh"], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 1 and "global batch 128 is not a multiple of 16 per GPU x 3 GPUs" in result.stderr


@pytest.mark.parametrize("name", ["zero2.json", "zero3.json", "zero3_offload.json"])
def test_deepspeed_configs(name):
    config = json.loads((REPO / "scripts" / name).read_text())
    zero = config["zero_optimization"]
    assert zero["stage"] == (2 if name == "zero2.json" else 3)
    if zero["stage"] == 3:
        assert zero["stage3_gather_16bit_weights_on_model_save"] is True  # saving gathers the full weights
    # No optimizer/scheduler sections: the Trainer's (with per-module learning rates and its schedule) are used.
    assert "optimizer" not in config and "scheduler" not in config


def test_llava_flag_names_dropped_by_transformers_5_still_work(tmp_path):
    argv = ["--model_name_or_path", "m", "--data_path", "d", "--output_dir", str(tmp_path), "--use_cpu", "True"]
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    _, _, args = parser.parse_args_into_dataclasses(argv + ["--warmup_ratio", "0.03", "--evaluation_strategy", "no"])
    assert args.get_warmup_steps(1000) == 30 and args.eval_strategy == "no"
    with pytest.raises(ValueError, match="not both"):
        parser.parse_args_into_dataclasses(argv + ["--warmup_ratio", "0.03", "--warmup_steps", "10"])


def test_bench_train_smoke(tmp_path):
    """The benchmark runs end to end; the tower runs once per step for M3 and once per budget for naive."""
    spec = importlib.util.spec_from_file_location("bench_train", REPO / "benchmarks/bench_train.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    report = bench.main(["--steps", "1", "--warmup", "0", "--batch-size", "2", "--output", str(tmp_path / "b.json")])
    calls = {name: result["tower_calls_per_step"] for name, result in report["results"].items()}
    assert calls == {"m3": 1, "single": 1, "single_m3_path": 1, "naive": 5}
    assert json.loads((tmp_path / "b.json").read_text())["scales"] == [1, 9, 36, 144, 576]
