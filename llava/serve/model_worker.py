"""A model worker: one model behind HTTP, registered with a controller and kept alive by heartbeats.

    python -m llava.serve.model_worker --host 127.0.0.1 --port 40000 --worker http://127.0.0.1:40000 \\
        --controller http://127.0.0.1:10000 --model-path mucai/llava-v1.5-7b-m3 --matryoshka_vis_token_scale 36

Routes:
    POST /worker_generate_stream   {"prompt", "images": [base64...], "temperature", "top_p", "max_new_tokens",
                                    "stop", "matryoshka_vis_token_scale"} → NUL-delimited JSON chunks
                                    {"text": prompt + answer so far, "error_code": 0}; the last one adds
                                    "finish_reason" and "usage". Bad input is answered before streaming with
                                    its HTTP status and {"text": message, "error_code": status}.
    POST /worker_get_status        {"model_names", "speed", "queue_length", "matryoshka": {...}}
    POST /worker_visual_tokens     {"matryoshka_vis_token_scale", "image_size": [w, h]?} → {"visual_tokens"}
    GET  /v1/models, POST /v1/chat/completions   the OpenAI-compatible API (see openai_api.py)

Concurrent requests are generated in batches (mixed scales in one batch) of up to
`--limit-model-concurrency`; see batcher.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import requests
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from llava.constants import WORKER_HEART_BEAT_INTERVAL
from llava.serve.engine import SamplingParams
from llava.serve.errors import RequestError
from llava.serve.http import parse_model, read_json_body, run_server
from llava.serve.openai_api import create_openai_router
from llava.serve.service import ModelService, add_model_arguments, add_serving_arguments, service_from_args

logger = logging.getLogger(__name__)


class WorkerGenerateParams(BaseModel):
    """The body of `/worker_generate_stream` (field names of the original LLaVA worker)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    prompt: str
    images: list[str] | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(256, ge=1)
    stop: str | list[str] | None = None
    matryoshka_vis_token_scale: Any = None


class VisualTokensParams(BaseModel):
    model_config = ConfigDict(extra="ignore")

    matryoshka_vis_token_scale: Any = None
    image_size: tuple[int, int] | None = None


def worker_error(error: RequestError) -> JSONResponse:
    return JSONResponse({"text": error.message, "error_code": error.status}, status_code=error.status)


class ControllerLink:
    """Registers a worker with its controller and sends heartbeats from a thread until stopped.

    A controller that answers a heartbeat with `exist: false` (it restarted, or dropped us after
    missed beats) gets a fresh registration; an unreachable one is retried at the next beat.
    """

    def __init__(
        self,
        controller_address: str,
        worker_address: str,
        status: Callable[[], dict[str, Any]],
        interval_s: float = WORKER_HEART_BEAT_INTERVAL,
    ) -> None:
        self.controller_address = controller_address.rstrip("/")
        self.worker_address = worker_address
        self.status = status
        self.interval_s = interval_s
        self.registered = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def register(self) -> bool:
        payload = {"worker_name": self.worker_address, "check_heart_beat": True, "worker_status": self.status()}
        try:
            response = requests.post(f"{self.controller_address}/register_worker", json=payload, timeout=5)
            response.raise_for_status()
        except requests.RequestException as e:
            logger.warning("cannot register with controller %s: %s", self.controller_address, e)
            return False
        logger.info("registered %s with controller %s", self.worker_address, self.controller_address)
        return True

    def heartbeat(self) -> None:
        payload = {"worker_name": self.worker_address, "queue_length": self.status()["queue_length"]}
        try:
            response = requests.post(f"{self.controller_address}/receive_heart_beat", json=payload, timeout=5)
            response.raise_for_status()
            exists = bool(response.json().get("exist"))
        except (requests.RequestException, ValueError) as e:
            logger.warning("heartbeat to controller %s failed: %s", self.controller_address, e)
            return
        if not exists:
            self.registered = self.register()

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="llava-worker-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def _loop(self) -> None:
        self.registered = self.register()
        while not self._stop.wait(self.interval_s):
            if self.registered:
                self.heartbeat()
            else:
                self.registered = self.register()


def create_app(service: ModelService, link: ControllerLink | None = None, api_key: str | None = None) -> FastAPI:
    """The worker's FastAPI app; its lifespan starts and stops the scheduler and the heartbeats."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        if link is not None:
            link.start()
        try:
            yield
        finally:
            if link is not None:
                link.stop()
            service.stop()

    app = FastAPI(title=f"LLaVA/M3 model worker: {service.model_name}", lifespan=lifespan)
    app.state.service = service

    @app.post("/worker_generate_stream")
    async def worker_generate_stream(request: Request) -> Any:
        try:
            with service.admission():
                body = await read_json_body(request, service.limits.max_request_bytes)
                params = parse_model(WorkerGenerateParams, body)
                if params.model is not None and params.model != service.model_name:
                    raise RequestError(404, f"this worker serves {service.model_name!r}, not {params.model!r}")
                stop = [params.stop] if isinstance(params.stop, str) else list(params.stop or [])
                sampling = SamplingParams(params.temperature, params.top_p, params.max_new_tokens, tuple(stop))
                prepared = await service.prepare(
                    params.prompt, params.images or [], params.matryoshka_vis_token_scale, sampling
                )
                stream = service.open_stream(prepared)
        except RequestError as e:
            logger.info("refused a request: %s", e)
            return worker_error(e)

        async def body() -> AsyncIterator[bytes]:
            async for chunk in stream:
                message: dict[str, Any] = {"text": params.prompt + chunk.text, "error_code": 0}
                if chunk.error is not None:
                    message.update(text=chunk.error, error_code=500)
                if chunk.done:
                    message["finish_reason"] = chunk.finish_reason
                    message["usage"] = {
                        "prompt_tokens": prepared.prompt_tokens,
                        "visual_tokens": prepared.visual_tokens,
                        "completion_tokens": chunk.completion_tokens,
                        "matryoshka_vis_token_scale": prepared.scale,
                    }
                yield json.dumps(message).encode() + b"\0"

        return StreamingResponse(body(), media_type="application/octet-stream")

    @app.post("/worker_get_status")
    async def worker_get_status() -> dict[str, Any]:
        return service.status()

    @app.post("/worker_visual_tokens")
    async def worker_visual_tokens(request: Request) -> Any:
        try:
            params = parse_model(VisualTokensParams, await read_json_body(request, 64 * 1024))
            scale = service.engine.resolve_scale(params.matryoshka_vis_token_scale)
            return {
                "matryoshka_vis_token_scale": scale,
                "visual_tokens": service.engine.num_visual_tokens(scale, params.image_size),
                "per_crop": scale,
                "anyres": service.engine.is_anyres,
            }
        except RequestError as e:
            return worker_error(e)

    app.include_router(create_openai_router(service, api_key=api_key))
    return app


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="LLaVA/M3 model worker", prog="python -m llava.serve.model_worker")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=40000)
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
    parser.add_argument("--log-level", default="info")
    add_model_arguments(parser)
    add_serving_arguments(parser)
    return parser.parse_args(argv)


def build_app(args: argparse.Namespace) -> FastAPI:
    """Load the model and assemble the worker app the flags describe."""
    service = service_from_args(args)
    worker_address = args.worker_address or f"http://{args.host}:{args.port}"
    link = None
    if not args.no_register:
        link = ControllerLink(args.controller_address, worker_address, service.status, args.heartbeat_interval)
    return create_app(service, link, api_key=args.api_key)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_server(build_app(args), args.host, args.port, args.log_level)


if __name__ == "__main__":
    main()
