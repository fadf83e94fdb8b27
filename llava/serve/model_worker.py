"""A model worker: one model behind HTTP, registered with a controller and kept alive by heartbeats.

    python -m llava.serve.model_worker --host 127.0.0.1 --port 40000 --worker http://127.0.0.1:40000 \\
        --controller http://127.0.0.1:10000 --model-path mucai/llava-v1.5-7b-m3 --matryoshka_vis_token_scale 36

Routes (bodies in protocol.py):
    POST /worker_generate_stream   {"prompt", "images": [base64...], "temperature", "top_p", "max_new_tokens",
                                    "stop", "matryoshka_vis_token_scale": N or "auto"} → NUL-delimited JSON
                                    chunks {"text": prompt + answer so far, "error_code": 0}; the last one adds
                                    "finish_reason" and "usage" (`answer_usage`: tokens, the budget used).
                                    Bad input is answered before streaming with its HTTP status and
                                    {"text": message, "error_code": status}.
    POST /worker_compare_budgets   the same prompt fields and "matryoshka_vis_token_scales": [1, 9, ...] (default:
                                    the trained budgets) → {"encode_seconds", "answers": [{"matryoshka_vis_token_scale",
                                    "text", "seconds", "visual_tokens", "prompt_tokens", "p_first", "pictures"}]}:
                                    every budget from one tower pass, with what each sees (PNG data URLs)
    POST /worker_get_status        {"model_names", "speed", "queue_length", "matryoshka": {...}}
    POST /worker_visual_tokens     {"matryoshka_vis_token_scale", "image_size": [w, h]?} → {"visual_tokens"}
    GET  /v1/models, POST /v1/chat/completions   the OpenAI-compatible API (see openai_api.py)

Concurrent requests are generated in batches (mixed scales in one batch) of up to
`--limit-model-concurrency`; see service.py. With a controller, the worker presents `--worker-key`
(or $LLAVA_WORKER_KEY) when it registers and beats.
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
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from llava.constants import WORKER_HEART_BEAT_INTERVAL
from llava.generation import SamplingParams
from llava.serve.args import parse_worker_args as parse_args
from llava.serve.backends import backend_from_args
from llava.serve.backends.base import AnswerStream, ServingBackend
from llava.serve.engine import BudgetComparison, PreparedRequest, answer_usage
from llava.serve.http import RequestError, create_json_app, guarded_stream, run_server
from llava.serve.media import png_data_url
from llava.serve.openai_api import create_openai_router
from llava.serve.protocol import (
    CompareBudgetsParams,
    PromptParams,
    VisualTokensParams,
    WorkerGenerateParams,
    request_budget,
)

logger = logging.getLogger(__name__)


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
        worker_key: str | None = None,
    ) -> None:
        self.controller_address = controller_address.rstrip("/")
        self.worker_address = worker_address
        self.status = status
        self.interval_s = interval_s
        self.headers = {"Authorization": f"Bearer {worker_key}"} if worker_key else {}
        self.registered = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _post(self, route: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        """POST to the controller; None (logged) when it cannot be reached or refuses."""
        url = f"{self.controller_address}/{route}"
        try:
            response = requests.post(url, json=payload, headers=self.headers, timeout=5)
        except requests.RequestException as e:
            logger.warning("cannot reach controller %s: %s", url, e)
            return None
        try:
            body = response.json()
        except ValueError:
            body = {"text": response.text[:200]}
        if response.status_code != 200:
            logger.error("controller %s refused (HTTP %d): %s", url, response.status_code, body.get("text", body))
            return None
        return body

    def register(self) -> bool:
        payload = {"worker_name": self.worker_address, "check_heart_beat": True, "worker_status": self.status()}
        if self._post("register_worker", payload) is None:
            return False
        logger.info("registered %s with controller %s", self.worker_address, self.controller_address)
        return True

    def heartbeat(self) -> None:
        payload = {"worker_name": self.worker_address, "queue_length": self.status()["queue_length"]}
        answer = self._post("receive_heart_beat", payload)
        if answer is not None and not answer.get("exist"):
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


def _chunk(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode() + b"\0"


async def _chunks(stream: AnswerStream, prompt: str, prepared: PreparedRequest) -> AsyncIterator[bytes]:
    """The worker protocol's stream: the prompt and the answer so far in each chunk, usage in the last."""
    async for chunk in stream:
        message: dict[str, Any] = {"text": prompt + chunk.text, "error_code": 0}
        if chunk.error is not None:
            message.update(text=chunk.error, error_code=500)
        if chunk.done:
            message["finish_reason"] = chunk.finish_reason
            message["usage"] = answer_usage(prepared, chunk)
        yield _chunk(message)


def _comparison_body(comparison: BudgetComparison) -> dict[str, Any]:
    """`/worker_compare_budgets`' answer: per budget its answer, time, tokens and pictures (PNG data URLs)."""
    answers = [
        {
            "matryoshka_vis_token_scale": answer.scale,
            "text": answer.text,
            "seconds": round(answer.seconds, 4),
            "visual_tokens": answer.visual_tokens,
            "prompt_tokens": answer.prompt_tokens,
            "p_first": round(answer.p_first, 6),
            "pictures": [png_data_url(picture) for picture in answer.pictures],
        }
        for answer in comparison.answers
    ]
    return {"encode_seconds": round(comparison.encode_seconds, 4), "answers": answers}


def create_app(service: ServingBackend, link: ControllerLink | None = None, api_key: str | None = None) -> FastAPI:
    """The worker's FastAPI app over any serving backend; its lifespan starts and stops the backend and the
    heartbeats."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        if link is not None:
            link.start()
        try:
            yield
        finally:
            if link is not None:
                link.stop()
            await service.stop()

    app = create_json_app(
        f"LLaVA/M3 model worker: {service.model_name}", service.limits.max_request_bytes, lifespan=lifespan
    )
    app.state.service = service

    @app.post("/worker_generate_stream")
    async def worker_generate_stream(params: WorkerGenerateParams) -> StreamingResponse:
        """Generate an answer, streamed as NUL-delimited JSON chunks (bad input: a JSON error before any chunk)."""
        with service.admission():
            sampling = _sampling(service, params)
            budget = request_budget(params.matryoshka_vis_token_scale)
            prepared = await service.prepare(params.prompt, params.images or [], budget, sampling)
            stream = await service.open_stream(prepared)

        body = guarded_stream(_chunks(stream, params.prompt, prepared), "/worker_generate_stream", _chunk)
        return StreamingResponse(body, media_type="application/octet-stream")

    @app.post("/worker_get_status")
    async def worker_get_status() -> dict[str, Any]:
        return service.status()

    _add_budget_routes(app, service)
    app.include_router(create_openai_router(service, api_key=api_key))
    return app


def _sampling(service: ServingBackend, params: PromptParams) -> SamplingParams:
    """A generation request's sampling settings, once it is known to be for this worker's model (else 404)."""
    if params.model is not None and params.model != service.model_name:
        raise RequestError(404, f"this worker serves {service.model_name!r}, not {params.model!r}", "model")
    return SamplingParams(params.temperature, params.top_p, params.max_new_tokens, params.stop_strings)


def _add_budget_routes(app: FastAPI, service: ServingBackend) -> None:
    """The routes about budgets: what an image costs at one, and one prompt answered at several."""

    @app.post("/worker_visual_tokens")
    async def worker_visual_tokens(params: VisualTokensParams) -> dict[str, Any]:
        """The visual tokens one image costs at a budget (for anyres, an image of `image_size`)."""
        scale = service.resolve_scale(params.matryoshka_vis_token_scale)
        size = tuple(params.image_size) if params.image_size is not None else None
        return {
            "matryoshka_vis_token_scale": scale,
            "visual_tokens": service.num_visual_tokens(scale, size),
            "per_crop": scale,
            "anyres": service.rules.is_anyres,
        }

    @app.post("/worker_compare_budgets")
    async def worker_compare_budgets(params: CompareBudgetsParams) -> dict[str, Any]:
        """One prompt answered at several budgets from one tower pass, with the picture of what each sees."""
        sampling = _sampling(service, params)
        comparison = await service.compare_budgets(
            params.prompt, params.images or [], params.matryoshka_vis_token_scales, sampling
        )
        return _comparison_body(comparison)


def build_app(args: argparse.Namespace) -> FastAPI:
    """Load the model (or connect to its engine) and assemble the worker app the flags describe."""
    service = backend_from_args(args)
    worker_address = args.worker_address or f"http://{args.host}:{args.port}"
    link = None
    if not args.no_register:
        link = ControllerLink(
            args.controller_address, worker_address, service.status, args.heartbeat_interval, args.worker_key
        )
    return create_app(service, link, api_key=args.api_key)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_server(build_app(args), args.host, args.port, args.log_level)


if __name__ == "__main__":
    main()
