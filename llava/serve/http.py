"""HTTP plumbing shared by the servers: capped body reading, JSON errors, running uvicorn.

`BackgroundServer` runs an app in a thread of the calling process (tests, benchmarks); `run_server`
is what each `main()` calls to serve in the foreground.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from typing import Any

import uvicorn
from fastapi import Request
from pydantic import ValidationError

from llava.serve.errors import RequestError

logger = logging.getLogger(__name__)


async def read_json_body(request: Request, max_bytes: int) -> dict[str, Any]:
    """The request's JSON object, reading at most `max_bytes` (413 beyond, 400 if not a JSON object)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise RequestError(413, f"request body of {declared} bytes is over the limit of {max_bytes} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise RequestError(413, f"request body is over the limit of {max_bytes} bytes")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(400, f"request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise RequestError(400, f"request body must be a JSON object, got {type(data).__name__}")
    return data


def validation_message(error: ValidationError) -> str:
    """A pydantic error as one line: `field.path: problem; ...`."""
    parts = []
    for item in error.errors():
        location = ".".join(str(p) for p in item["loc"]) or "body"
        parts.append(f"{location}: {item['msg']}")
    return "; ".join(parts)


def parse_model(model_cls: type, data: dict[str, Any]) -> Any:
    """`model_cls.model_validate(data)`, with validation failures as a 400 `RequestError`."""
    try:
        return model_cls.model_validate(data)
    except ValidationError as e:
        raise RequestError(400, f"invalid request: {validation_message(e)}") from None


def run_server(app: Any, host: str, port: int, log_level: str = "info") -> None:
    """Serve `app` in the foreground until interrupted."""
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_keep_alive=30)


class BackgroundServer:
    """Run an ASGI app with uvicorn in a thread; `port=0` takes a free port (see `.port`, `.url`)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        self.host = host
        self._server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on"))
        self._thread: threading.Thread | None = None
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 60.0) -> BackgroundServer:
        self._thread = threading.Thread(target=self._server.run, name=f"uvicorn-{self.host}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"server on {self.host}:{self.port} failed to start (see the log)")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"server on {self.host}:{self.port} did not start in {timeout}s")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def find_free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (for servers that must know their address before they start)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
