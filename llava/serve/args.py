"""The command-line flags of every serving entry point, declared once (torch-free: the controller and the
web demo parse theirs here too).

The flags and spellings of the original LLaVA commands are real aliases (`--controller` for
`--controller-url`, `--worker` for `--worker-address`, ...); abbreviations are refused
(`allow_abbrev=False`), so a mistyped flag is an error rather than a different flag.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from llava.constants import (
    CONTROLLER_HEART_BEAT_EXPIRATION,
    DEFAULT_MAX_IMAGES,
    DEFAULT_MAX_NEW_TOKENS_LIMIT,
    WORKER_HEART_BEAT_INTERVAL,
)
from llava.serve.http import MIB

WORKER_KEY_ENV = "LLAVA_WORKER_KEY"
ENGINE_API_KEY_ENV = "LLAVA_ENGINE_API_KEY"
BACKENDS = ("hf", "vllm", "openai")
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEFAULT_EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "images"


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=f"python -m {prog}", description=description, allow_abbrev=False)


def _add_address(parser: argparse.ArgumentParser, port: int) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=port)


def _add_log_level(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error", "critical"])


def _add_worker_key(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--worker-key",
        default=os.environ.get(WORKER_KEY_ENV) or None,
        help=f"shared secret workers present to register and heartbeat (default: ${WORKER_KEY_ENV}; prefer the "
        "variable, a command line is visible to every user of the machine). Without a key the controller "
        "accepts workers from this machine only",
    )


def add_loading_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """How the checkpoint is loaded (`load_pretrained_model`: quantisation, attention, compile) and prepared
    (`prepare_for_inference`: CPU packing).

    Shared by the worker, the OpenAI-style server and `llava.serve.cli`.
    """
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default="auto",
        help="the model's dtype. auto: float32 on the CPU, float16 on a GPU (--backend vllm: vLLM's own "
        "choice, bfloat16 for a float32 checkpoint on a CPU). bfloat16 on a CPU with AVX512-BF16 or AMX runs "
        "the matrix products about twice as fast as float32, at bfloat16's precision",
    )
    parser.add_argument("--load-8bit", action="store_true")
    parser.add_argument("--load-4bit", action="store_true")
    parser.add_argument("--use-flash-attn", action="store_true")
    parser.add_argument(
        "--torch-compile",
        action="store_true",
        help="torch.compile the vision tower and projector (first image per shape compiles)",
    )
    parser.add_argument(
        "--cpu-weight-prepack",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="CPU, float32: pack linear weights once for oneDNN (faster prefill and decode). Default: the "
        "layers where it pays, whenever it applies; --cpu-weight-prepack packs every layer, "
        "--no-cpu-weight-prepack none",
    )


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    # Only the commands that load a model parse these flags, and llava.generation brings torch with it.
    from llava.generation import add_scale_argument, default_device

    group = parser.add_argument_group("model")
    group.add_argument("--model-path", required=True, help="checkpoint folder or hub id")
    group.add_argument("--model-base", default=None, help="base LLM for LoRA or projector-only checkpoints")
    group.add_argument("--model-name", default=None, help="name clients use (default: from --model-path)")
    group.add_argument("--device", default=default_device(), help="cuda, mps or cpu (default: the best available)")
    add_loading_arguments(group)
    group.add_argument("--conv-mode", default=None, help="conversation template (default: the checkpoint's)")
    add_scale_argument(group, "default visual-token budget when a request names none (1/9/36/144/576)")


def _add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "engine",
        "which engine generates (llava/serve/backends). With --backend vllm, --dtype goes to the engine too, and "
        "every flag not listed here is a vLLM engine flag (`vllm serve --help`), e.g. --tensor-parallel-size 2 --max-model-len 4096",
    )
    group.add_argument(
        "--backend",
        choices=BACKENDS,
        default="hf",
        help="hf: our own engine in this process (the default); vllm: an in-process vLLM engine (needs vLLM and the "
        "llava plugin); openai: an engine already running at --engine-url, such as a vLLM server of the checkpoint",
    )
    group.add_argument(
        "--engine-url", default=None, help="--backend openai: the engine's OpenAI API, http://HOST:PORT/v1"
    )
    group.add_argument(
        "--engine-model", default=None, help="--backend openai: the engine's model id (default: its only one)"
    )
    group.add_argument(
        "--engine-api-key",
        default=os.environ.get(ENGINE_API_KEY_ENV) or None,
        help=f"--backend openai: the engine's API key (default: ${ENGINE_API_KEY_ENV})",
    )
    group.add_argument(
        "--engine-timeout", type=float, default=300.0, help="--backend openai: seconds the engine may stay silent"
    )
    group.add_argument(
        "--engine-wait", type=float, default=600.0, help="--backend openai: seconds to wait at start for the engine"
    )


def _parse_with_engine_flags(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse `argv`; flags the parser does not know become `engine_args` for `--backend vllm`, an error otherwise."""
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.backend != "vllm":
        parser.error(f"unrecognized arguments: {' '.join(unknown)} (only --backend vllm passes on engine flags)")
    args.engine_args = unknown
    return args


def _add_serving_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("serving")
    group.add_argument(
        "--limit-model-concurrency",
        type=int,
        default=8,
        help="--backend hf: most requests generated at once (one batch); more wait in the queue (vLLM's engine flag "
        "for it: --max-num-seqs)",
    )
    group.add_argument(
        "--batch-wait-ms",
        type=float,
        default=5.0,
        help="--backend hf: how long the first request of a batch waits for others",
    )
    group.add_argument(
        "--stream-interval-ms",
        type=float,
        default=20.0,
        help="--backend hf: stream text to clients at most this often (first and last chunks go at once)",
    )
    group.add_argument("--max-queued-requests", type=int, default=256, help="503 beyond this many queued requests")
    group.add_argument("--max-request-bytes", type=int, default=32 * MIB, help="413 for larger request bodies")
    group.add_argument("--max-image-bytes", type=int, default=10 * MIB, help="413 for larger images")
    group.add_argument(
        "--max-image-pixels",
        type=int,
        default=4096 * 4096,
        help="413 for images with more pixels, or that preprocessing would enlarge beyond it (padding to a square)",
    )
    group.add_argument(
        "--max-images", type=int, default=DEFAULT_MAX_IMAGES, help="400 for more images per request (a video is one)"
    )
    _add_video_arguments(group)
    group.add_argument(
        "--max-new-tokens-limit",
        type=int,
        default=DEFAULT_MAX_NEW_TOKENS_LIMIT,
        help="cap on max_new_tokens / max_tokens",
    )
    group.add_argument(
        "--allow-remote-images",
        action="store_true",
        help="fetch http(s) image and video URLs in requests (off: only inline base64 / data: URLs)",
    )
    group.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on the /v1 routes")


def _add_video_arguments(group: argparse._ArgumentGroup) -> None:
    """The limits on a video in a request (it reaches the model as one image, the grid of a few of its frames)."""
    group.add_argument("--max-video-bytes", type=int, default=16 * MIB, help="413 for larger videos")
    group.add_argument(
        "--max-video-pixels",
        type=int,
        default=1920 * 1080,
        help="413 for videos whose frames have more pixels (read from the header, before decoding)",
    )
    group.add_argument("--max-video-seconds", type=float, default=3600.0, help="413 for longer videos")
    group.add_argument(
        "--max-video-frames",
        type=int,
        default=3000,
        help="413 for a video that needs more frames decoded to reach the ones it is asked about (a video "
        "with few keyframes is decoded from its start)",
    )
    group.add_argument(
        "--video-num-frames", type=int, default=6, help="frames in a video's grid (IG-VLM's 6: 2 per row, 3 rows)"
    )


def parse_controller_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = _parser("llava.serve.controller", "LLaVA/M3 controller: the registry of model workers")
    _add_address(parser, 10000)
    parser.add_argument("--dispatch-method", choices=("lottery", "shortest_queue"), default="shortest_queue")
    parser.add_argument(
        "--heartbeat-expiration",
        type=float,
        default=CONTROLLER_HEART_BEAT_EXPIRATION,
        help="drop a worker whose last heartbeat is older than this many seconds",
    )
    parser.add_argument(
        "--worker-read-timeout",
        type=float,
        default=300.0,
        help="end a proxied answer with an error when its worker sends nothing for this many seconds",
    )
    parser.add_argument("--max-request-bytes", type=int, default=32 * MIB, help="413 for larger request bodies")
    _add_worker_key(parser)
    _add_log_level(parser)
    return parser.parse_args(argv)


def parse_worker_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = _parser("llava.serve.model_worker", "LLaVA/M3 model worker")
    _add_address(parser, 40000)
    parser.add_argument(
        "--worker-address",
        "--worker",
        dest="worker_address",
        default=None,
        help="URL the controller reaches this worker at (default: http://HOST:PORT)",
    )
    parser.add_argument(
        "--controller-address", "--controller", dest="controller_address", default="http://127.0.0.1:10000"
    )
    parser.add_argument("--no-register", action="store_true", help="serve without registering with a controller")
    parser.add_argument("--heartbeat-interval", type=float, default=WORKER_HEART_BEAT_INTERVAL, help="seconds")
    _add_worker_key(parser)
    _add_log_level(parser)
    _add_model_arguments(parser)
    _add_backend_arguments(parser)
    _add_serving_arguments(parser)
    legacy = parser.add_argument_group("accepted from LLaVA's worker command line, without effect")
    legacy.add_argument("--multi-modal", action="store_true", help="images are always supported")
    legacy.add_argument("--stream-interval", type=int, default=None, help="the pace is --stream-interval-ms")
    return _parse_with_engine_flags(parser, argv)


def parse_openai_api_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = _parser("llava.serve.openai_api", "OpenAI-compatible LLaVA/M3 server")
    _add_address(parser, 8000)
    _add_log_level(parser)
    _add_model_arguments(parser)
    _add_backend_arguments(parser)
    _add_serving_arguments(parser)
    return _parse_with_engine_flags(parser, argv)


def parse_web_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = _parser("llava.serve.gradio_web_server", "LLaVA/M3 web demo")
    _add_address(parser, 7860)
    parser.add_argument("--controller-url", "--controller", dest="controller_url", default="http://127.0.0.1:10000")
    parser.add_argument("--concurrency-count", type=int, default=16, help="answers generated at once")
    parser.add_argument(
        "--model-list-mode",
        choices=["once", "reload"],
        default="once",
        help="read the model list once at startup, or on every page load",
    )
    parser.add_argument("--examples-dir", type=Path, default=DEFAULT_EXAMPLES_DIR)
    parser.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    parser.add_argument("--embed", action="store_true", help="no page title, for embedding the demo in a page")
    parser.add_argument(
        "--moderate",
        action="store_true",
        help="LLaVA's OpenAI moderation of prompts; not available here, so the flag is refused at startup",
    )
    return parser.parse_args(argv)
