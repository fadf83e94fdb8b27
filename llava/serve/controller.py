"""The controller: a registry of model workers that clients ask which worker serves a model.

    python -m llava.serve.controller --host 127.0.0.1 --port 10000 [--dispatch-method shortest_queue]

Workers register (`/register_worker`) and then beat (`/receive_heart_beat`) every few seconds; a
worker whose last beat is older than `--heartbeat-expiration` seconds is dropped, as is one that
cannot be reached, or fails or falls silent while a request is proxied to it. Clients call
`/list_models`, `/get_worker_address` (`lottery`: random, weighted by worker speed; `shortest_queue`:
the worker with the least queued work per unit of speed) and may stream through the controller with
`/worker_generate_stream`. The route names and bodies are those of the original LLaVA controller
(protocol.py has them).

Registering and beating is the control plane: whoever registers a worker receives users' prompts and
images. With `--worker-key` (or $LLAVA_WORKER_KEY) workers must present the key; without one, only
processes on this machine may register, which is what a one-machine demo needs and keeps a controller
that listens on the network from being taken over.

The controller imports no torch: it starts in a fraction of a second.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from llava.constants import CONTROLLER_HEART_BEAT_EXPIRATION
from llava.serve.args import WORKER_KEY_ENV
from llava.serve.args import parse_controller_args as parse_args
from llava.serve.http import (
    MIB,
    RequestError,
    bearer_token_matches,
    create_json_app,
    guarded_stream,
    run_server,
    unless,
)
from llava.serve.protocol import (
    ControllerGenerateParams,
    HeartbeatParams,
    ModelQuery,
    RegisterWorkerParams,
    WorkerStatus,
)

logger = logging.getLogger(__name__)

DISPATCH_METHODS = ("lottery", "shortest_queue")


@dataclass
class WorkerInfo:
    model_names: list[str]
    speed: float
    queue_length: int
    last_heart_beat: float
    gone: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the worker is dropped: the answers being relayed from it end at once."""


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

    def register_worker(self, worker_name: str, status: WorkerStatus) -> None:
        """Add a worker, or update one that registers again (its answers in flight go on)."""
        info = self.workers.get(worker_name)
        if info is None:
            info = self.workers[worker_name] = WorkerInfo(list(status.model_names), 0.0, 0, 0.0)
        info.model_names = list(status.model_names)
        info.speed = status.speed
        info.queue_length = status.queue_length
        info.last_heart_beat = time.monotonic()
        logger.info("registered worker %s serving %s", worker_name, status.model_names)

    def remove_worker(self, worker_name: str, reason: str) -> None:
        info = self.workers.pop(worker_name, None)
        if info is not None:
            info.gone.set()
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
        """Drop every worker whose last beat is older than the expiration (none is exempt)."""
        deadline = time.monotonic() - self.heartbeat_expiration
        stale = [name for name, w in self.workers.items() if w.last_heart_beat < deadline]
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
            weights = [w.speed for _, w in candidates]
            return self._rng.choices([name for name, _ in candidates], weights=weights)[0]
        name, info = min(candidates, key=lambda item: item[1].queue_length / item[1].speed)
        info.queue_length += 1  # until the next beat, count the request we are sending it
        return name

    def status(self) -> dict[str, Any]:
        return {
            "model_names": self.list_models(),
            "speed": sum(w.speed for w in self.workers.values()),
            "queue_length": sum(w.queue_length for w in self.workers.values()),
            "workers": sorted(self.workers),
        }


def _is_local(host: str | None) -> bool:
    """Whether a client address is this machine (no address: a Unix socket, local too)."""
    if host is None:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def worker_authorizer(worker_key: str | None) -> Callable[[Request], None]:
    """The check on the control plane: the worker key when there is one, else a client on this machine."""

    def authorize(request: Request) -> None:
        if worker_key is not None:
            if not bearer_token_matches(request, worker_key):
                raise RequestError(
                    401, "invalid or missing worker key: start the worker with the controller's --worker-key"
                )
        elif not _is_local(request.client.host if request.client else None):
            raise RequestError(
                403,
                "this controller has no worker key, so it accepts workers from its own machine only; start the "
                f"controller and the workers with the same --worker-key (or ${WORKER_KEY_ENV})",
            )

    return authorize


async def _fetch_status(client: httpx.AsyncClient, worker_name: str) -> WorkerStatus | None:
    try:
        response = await client.post(f"{worker_name}/worker_get_status", timeout=5)
        response.raise_for_status()
        return WorkerStatus.model_validate(response.json())
    except (httpx.HTTPError, ValueError, ValidationError) as e:
        logger.warning("cannot get the status of worker %s: %s", worker_name, e)
        return None


def _chunk(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode() + b"\0"


async def _next_chunk(chunks: AsyncIterator[bytes]) -> bytes:
    """The next piece of a stream, b"" at its end."""
    try:
        return await anext(chunks)
    except StopAsyncIteration:
        return b""


async def _relay(
    controller: Controller, address: str, model: str, upstream: httpx.Response, gone: asyncio.Event
) -> AsyncIterator[bytes]:
    """A worker's NUL-delimited chunks, each whole. When the worker dies, falls silent for the read timeout or
    is dropped meanwhile (no heartbeats), the answer ends with an error chunk instead of a cut or a hang."""
    pending = b""
    chunks = upstream.aiter_raw()
    failure = None
    try:
        while True:
            try:
                data = await unless(_next_chunk(chunks), gone.wait())
            except httpx.HTTPError as e:
                failure = f"it failed mid-answer ({type(e).__name__}: {e})"
                controller.remove_worker(address, failure)
                break
            if data is None:
                failure = "it stopped sending heartbeats and was dropped"
                break
            if not data:
                break
            pending += data
            *complete, pending = pending.split(b"\0")
            for message in complete:
                yield message + b"\0"
    finally:
        await upstream.aclose()
    if failure is None and pending.strip():
        failure = "its answer ended in the middle of a chunk"
    if failure is not None:
        message = f"the worker serving {model!r} stopped answering: {failure}; retry to use another worker"
        yield _chunk({"text": message, "error_code": 502})


def _json_or_text(body: bytes, status: int) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return {"text": body.decode(errors="replace"), "error_code": status}


def create_app(
    controller: Controller,
    max_request_bytes: int = 32 * MIB,
    worker_key: str | None = None,
    worker_read_timeout: float = 300.0,
) -> FastAPI:
    """The controller's FastAPI app; its lifespan runs the stale-worker sweep and owns the HTTP client."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.client = httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=worker_read_timeout))
        sweep = asyncio.create_task(_sweep(controller))
        try:
            yield
        finally:
            sweep.cancel()
            await app.state.client.aclose()

    app = create_json_app("LLaVA/M3 controller", max_request_bytes, lifespan=lifespan)
    app.state.controller = controller
    _add_registry_routes(app, controller, worker_authorizer(worker_key))
    _add_dispatch_routes(app, controller)
    return app


def _add_registry_routes(app: FastAPI, controller: Controller, authorize: Callable[[Request], None]) -> None:
    """Registration and heartbeats (the control plane, behind `authorize`), and refreshing the registry."""

    @app.post("/register_worker", dependencies=[Depends(authorize)])
    async def register_worker(params: RegisterWorkerParams) -> dict[str, Any]:
        status = params.worker_status or await _fetch_status(app.state.client, params.worker_name)
        if status is None:
            raise RequestError(
                400,
                f"worker {params.worker_name} sent no worker_status and did not report one at /worker_get_status",
                "worker_status",
            )
        controller.register_worker(params.worker_name, status)
        return {"ok": True}

    @app.post("/receive_heart_beat", dependencies=[Depends(authorize)])
    async def receive_heart_beat(params: HeartbeatParams) -> dict[str, Any]:
        return {"exist": controller.receive_heart_beat(params.worker_name, params.queue_length)}

    @app.post("/refresh_all_workers")
    async def refresh_all_workers() -> dict[str, Any]:
        """Re-read every worker's status; drop those that do not answer."""
        for name in list(controller.workers):
            status = await _fetch_status(app.state.client, name)
            if status is None:
                controller.remove_worker(name, "unreachable on refresh")
            elif name in controller.workers:
                controller.register_worker(name, status)
        return {"workers": sorted(controller.workers)}

    @app.post("/worker_get_status")
    async def worker_get_status() -> dict[str, Any]:
        return controller.status()


def _add_dispatch_routes(app: FastAPI, controller: Controller) -> None:
    """What clients ask: the models, a worker's address, and an answer streamed through the controller."""

    @app.post("/list_models")
    async def list_models() -> dict[str, Any]:
        return {"models": controller.list_models()}

    @app.post("/get_worker_address")
    async def get_worker_address(params: ModelQuery) -> dict[str, Any]:
        return {"address": controller.get_worker_address(params.model)}

    @app.post("/worker_generate_stream")
    async def worker_generate_stream(params: ControllerGenerateParams) -> Any:
        """Forward a generation to a worker of the requested model and relay its stream."""
        address = controller.get_worker_address(params.model)
        if not address:
            raise RequestError(
                404,
                f"no worker is serving model {params.model!r} (it may have stopped); "
                f"available: {controller.list_models()}",
                "model",
            )
        gone = controller.workers[address].gone
        client: httpx.AsyncClient = app.state.client
        request = client.build_request(
            "POST", f"{address}/worker_generate_stream", json=params.model_dump(exclude_unset=True)
        )
        try:
            upstream = await unless(client.send(request, stream=True), gone.wait())
        except httpx.HTTPError as e:
            controller.remove_worker(address, f"unreachable: {type(e).__name__}: {e}")
            upstream = None
        if upstream is None:
            raise RequestError(503, f"the worker for model {params.model!r} is unreachable (dropped); retry")
        if upstream.status_code != 200:
            body = await upstream.aread()
            await upstream.aclose()
            return JSONResponse(status_code=upstream.status_code, content=_json_or_text(body, upstream.status_code))
        relay = _relay(controller, address, params.model, upstream, gone)
        return StreamingResponse(
            guarded_stream(relay, "/worker_generate_stream", _chunk), media_type="application/octet-stream"
        )


async def _sweep(controller: Controller) -> None:
    interval = max(0.05, min(controller.heartbeat_expiration / 3, 10.0))
    while True:
        await asyncio.sleep(interval)
        controller.remove_stale_workers()


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.worker_key is None and args.host != "localhost" and not _is_local(args.host):
        logger.warning(
            "no --worker-key: workers on other machines cannot register (only this machine's can); set "
            "--worker-key or $%s on the controller and its workers",
            WORKER_KEY_ENV,
        )
    controller = Controller(args.dispatch_method, args.heartbeat_expiration)
    app = create_app(controller, args.max_request_bytes, args.worker_key, args.worker_read_timeout)
    run_server(app, args.host, args.port, args.log_level)


if __name__ == "__main__":
    main()
