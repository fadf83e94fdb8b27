"""The controller: a registry of model workers that clients ask which worker serves a model.

    python -m llava.serve.controller --host 127.0.0.1 --port 10000 [--dispatch-method shortest_queue]

Workers register (`/register_worker`) and then beat (`/receive_heart_beat`) every few seconds; a
worker whose last beat is older than `--heartbeat-expiration` seconds is dropped, as is one that
cannot be reached when a request is proxied to it. Clients call `/list_models`,
`/get_worker_address` (`lottery`: random, weighted by worker speed; `shortest_queue`: the worker
with the least queued work per unit of speed) and may stream through the controller with
`/worker_generate_stream`. The route names and bodies are those of the original LLaVA controller.

The controller imports no torch: it starts in a fraction of a second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from llava.constants import CONTROLLER_HEART_BEAT_EXPIRATION
from llava.serve.errors import RequestError
from llava.serve.http import read_json_body, run_server
from llava.serve.media import MIB

logger = logging.getLogger(__name__)

DISPATCH_METHODS = ("lottery", "shortest_queue")


@dataclass
class WorkerInfo:
    model_names: list[str]
    speed: float
    queue_length: int
    check_heart_beat: bool
    last_heart_beat: float


class Controller:
    """The worker registry and dispatch policy. Used from one event loop, so it needs no lock."""

    def __init__(
        self,
        dispatch_method: str = "shortest_queue",
        heartbeat_expiration: float = CONTROLLER_HEART_BEAT_EXPIRATION,
        seed: int | None = None,
    ) -> None:
        if dispatch_method not in DISPATCH_METHODS:
            raise ValueError(f"dispatch_method={dispatch_method!r} is not one of {list(DISPATCH_METHODS)}")
        self.dispatch_method = dispatch_method
        self.heartbeat_expiration = heartbeat_expiration
        self.workers: dict[str, WorkerInfo] = {}
        self._rng = random.Random(seed)

    def register_worker(self, worker_name: str, check_heart_beat: bool, status: dict[str, Any]) -> None:
        self.workers[worker_name] = WorkerInfo(
            model_names=list(status["model_names"]),
            speed=float(status.get("speed", 1)),
            queue_length=int(status.get("queue_length", 0)),
            check_heart_beat=check_heart_beat,
            last_heart_beat=time.monotonic(),
        )
        logger.info("registered worker %s serving %s", worker_name, status["model_names"])

    def remove_worker(self, worker_name: str, reason: str) -> None:
        if self.workers.pop(worker_name, None) is not None:
            logger.warning("dropped worker %s: %s", worker_name, reason)

    def receive_heart_beat(self, worker_name: str, queue_length: int) -> bool:
        """Record a beat; False tells the worker to register again (it is not known here)."""
        info = self.workers.get(worker_name)
        if info is None:
            logger.info("heartbeat from unknown worker %s", worker_name)
            return False
        info.queue_length = queue_length
        info.last_heart_beat = time.monotonic()
        return True

    def remove_stale_workers(self) -> list[str]:
        deadline = time.monotonic() - self.heartbeat_expiration
        stale = [name for name, w in self.workers.items() if w.check_heart_beat and w.last_heart_beat < deadline]
        for name in stale:
            self.remove_worker(name, f"no heartbeat for {self.heartbeat_expiration}s")
        return stale

    def list_models(self) -> list[str]:
        return sorted({model for w in self.workers.values() for model in w.model_names})

    def get_worker_address(self, model_name: str) -> str:
        """The worker to send a request for `model_name` to, or "" when none serves it."""
        candidates = [(name, w) for name, w in self.workers.items() if model_name in w.model_names]
        if not candidates:
            return ""
        if self.dispatch_method == "lottery":
            weights = [max(w.speed, 1e-6) for _, w in candidates]
            return self._rng.choices([name for name, _ in candidates], weights=weights)[0]
        name, info = min(candidates, key=lambda item: item[1].queue_length / max(item[1].speed, 1e-6))
        info.queue_length += 1  # until the next beat, count the request we are sending it
        return name

    def status(self) -> dict[str, Any]:
        return {
            "model_names": self.list_models(),
            "speed": sum(w.speed for w in self.workers.values()),
            "queue_length": sum(w.queue_length for w in self.workers.values()),
            "workers": sorted(self.workers),
        }


async def _fetch_status(client: httpx.AsyncClient, worker_name: str) -> dict[str, Any] | None:
    try:
        response = await client.post(f"{worker_name}/worker_get_status", timeout=5)
        response.raise_for_status()
        return response.json()
    except (httpx.HTTPError, ValueError) as e:
        logger.warning("cannot get the status of worker %s: %s", worker_name, e)
        return None


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"text": message, "error_code": status}, status_code=status)


def create_app(controller: Controller, max_request_bytes: int = 32 * MIB) -> FastAPI:
    """The controller's FastAPI app; its lifespan runs the stale-worker sweep and owns the HTTP client."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.client = httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None))
        sweep = asyncio.create_task(_sweep(controller))
        try:
            yield
        finally:
            sweep.cancel()
            await app.state.client.aclose()

    app = FastAPI(title="LLaVA/M3 controller", lifespan=lifespan)
    app.state.controller = controller

    @app.post("/register_worker")
    async def register_worker(request: Request) -> Any:
        try:
            data = await read_json_body(request, 1 * MIB)
        except RequestError as e:
            return _error(e.status, e.message)
        name = data.get("worker_name")
        if not isinstance(name, str) or not name:
            return _error(400, "register_worker needs a worker_name")
        status = data.get("worker_status") or await _fetch_status(app.state.client, name)
        if not isinstance(status, dict) or not isinstance(status.get("model_names"), list):
            return _error(400, f"no usable status for worker {name}")
        controller.register_worker(name, bool(data.get("check_heart_beat", True)), status)
        return {"ok": True}

    @app.post("/refresh_all_workers")
    async def refresh_all_workers() -> Any:
        for name in list(controller.workers):
            status = await _fetch_status(app.state.client, name)
            if status is None:
                controller.remove_worker(name, "unreachable on refresh")
            else:
                controller.register_worker(name, controller.workers[name].check_heart_beat, status)
        return {"workers": sorted(controller.workers)}

    @app.post("/list_models")
    async def list_models() -> Any:
        return {"models": controller.list_models()}

    @app.post("/get_worker_address")
    async def get_worker_address(request: Request) -> Any:
        try:
            data = await read_json_body(request, 64 * 1024)
        except RequestError as e:
            return _error(e.status, e.message)
        return {"address": controller.get_worker_address(str(data.get("model", "")))}

    @app.post("/receive_heart_beat")
    async def receive_heart_beat(request: Request) -> Any:
        try:
            data = await read_json_body(request, 64 * 1024)
        except RequestError as e:
            return _error(e.status, e.message)
        queue_length = data.get("queue_length", 0)
        if not isinstance(queue_length, int):
            return _error(400, "queue_length must be an integer")
        exist = controller.receive_heart_beat(str(data.get("worker_name", "")), queue_length)
        return {"exist": exist}

    @app.post("/worker_get_status")
    async def worker_get_status() -> Any:
        return controller.status()

    @app.post("/worker_generate_stream")
    async def worker_generate_stream(request: Request) -> Any:
        """Forward a generation to a worker of the requested model and relay its stream unchanged."""
        try:
            data = await read_json_body(request, max_request_bytes)
        except RequestError as e:
            return _error(e.status, e.message)
        model = str(data.get("model", ""))
        address = controller.get_worker_address(model)
        if not address:
            return _error(
                503,
                f"no worker is serving model {model!r} (it may have stopped); available: {controller.list_models()}",
            )
        client: httpx.AsyncClient = app.state.client
        try:
            upstream = await client.send(
                client.build_request("POST", f"{address}/worker_generate_stream", json=data), stream=True
            )
        except httpx.HTTPError as e:
            controller.remove_worker(address, f"unreachable: {e}")
            return _error(503, f"the worker for model {model!r} is unreachable (dropped); retry to use another")
        if upstream.status_code != 200:
            body = await upstream.aread()
            await upstream.aclose()
            return JSONResponse(status_code=upstream.status_code, content=_json_or_text(body))

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in upstream.aiter_raw():
                    yield chunk
            finally:
                await upstream.aclose()

        return StreamingResponse(relay(), media_type="application/octet-stream")

    return app


def _json_or_text(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return {"text": body.decode(errors="replace"), "error_code": 502}


async def _sweep(controller: Controller) -> None:
    interval = max(0.05, min(controller.heartbeat_expiration / 3, 10.0))
    while True:
        await asyncio.sleep(interval)
        controller.remove_stale_workers()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="LLaVA/M3 controller", prog="python -m llava.serve.controller")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=10000)
    parser.add_argument("--dispatch-method", choices=DISPATCH_METHODS, default="shortest_queue")
    parser.add_argument(
        "--heartbeat-expiration",
        type=float,
        default=CONTROLLER_HEART_BEAT_EXPIRATION,
        help="drop a worker whose last heartbeat is older than this many seconds",
    )
    parser.add_argument("--max-request-bytes", type=int, default=32 * MIB)
    parser.add_argument("--log-level", default="info")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    controller = Controller(args.dispatch_method, args.heartbeat_expiration)
    run_server(create_app(controller, args.max_request_bytes), args.host, args.port, args.log_level)


if __name__ == "__main__":
    main()
