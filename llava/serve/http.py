"""HTTP plumbing every server shares: the one error type, the one JSON error handler, safe request bodies.

- `RequestError` is the only exception the serving code raises for a request it refuses.
- `create_json_app` builds a FastAPI app whose routes read their body with a size cap, parse it with
  the limits below and validate it into a pydantic request model (`RequestModel`), and whose every
  error, expected or not, is a JSON answer: 4xx naming the field and what is allowed, or 500 with a
  request id that is also in the server's log. Routes under `/v1/` answer in OpenAI's error shape,
  the others in LLaVA's worker shape `{"text", "error_code"}`.
- `until_disconnected` stops waiting for a non-streaming answer whose client went away.
- `BackgroundServer` runs an app in a thread of the calling process (tests, benchmarks); `run_server`
  is what each `main()` calls to serve in the foreground.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress
from typing import Annotated, Any, TypeVar

import uvicorn
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import AfterValidator, BaseModel, ConfigDict
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException

logger = logging.getLogger(__name__)

T = TypeVar("T")

MIB = 1024 * 1024
MAX_NUMBER_DIGITS = 100
"""Longer integer literals are read as ±10**100 (see `parse_json`)."""


class RequestError(HTTPException):
    """A request the server refuses, with the HTTP status to answer and a message for the client.

    400 for malformed input (bad field, bad scale, unreadable image, too many images, prompt over the
    context), 401 for a wrong API or worker key, 403 for a worker registering from another machine
    without a key, 404 for an unknown model, 413 for a body or image over a size limit, 503 when the
    queue is full or a worker cannot be reached. A Starlette `HTTPException`, so FastAPI passes it
    through body parsing and dependencies unchanged to the app's error handler.
    """

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message
        self.param = param

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"RequestError({self.status}, {self.message!r})"


# -- request bodies -------------------------------------------------------------------------------


def _valid_unicode(text: str) -> str:
    """Refuse text that cannot be encoded as UTF-8 (a lone surrogate such as `\\ud800` from a JSON escape):
    the tokenizer and every log line would fail on it later."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise PydanticCustomError(
            "unicode",
            "text must be valid Unicode; it has a lone surrogate {char} at index {index}",
            {"char": f"\\u{ord(text[e.start]):04x}", "index": e.start},
        ) from None
    return text


Text = Annotated[str, AfterValidator(_valid_unicode)]
"""A string field of a request: valid Unicode only."""


class RequestModel(BaseModel):
    """Base of every request body: strict types (no `9.0` for an int, no `"9"` or `true` for a number), finite
    numbers only, unknown fields ignored (clients such as OpenAI's send more than a server honours)."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")


def _bounded_int(literal: str) -> int:
    # Converting a long digit string costs quadratic time and Python refuses more than 4300 digits. No
    # field accepts numbers anywhere near 10**100, so the field's own range check refuses this value and
    # names the field, which a parse error could not.
    if len(literal.lstrip("-")) <= MAX_NUMBER_DIGITS:
        return int(literal)
    return -(10**MAX_NUMBER_DIGITS) if literal.startswith("-") else 10**MAX_NUMBER_DIGITS


def parse_json(raw: bytes) -> Any:
    """A request body → Python objects; a 400 `RequestError` for anything that is not UTF-8 JSON.

    Integers longer than `MAX_NUMBER_DIGITS` digits become ±10**100 (out of every field's range);
    nesting deeper than the interpreter's recursion limit is refused. NaN and Infinity are read as
    floats so that the request model names the field that carries them.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RequestError(400, f"request body is not UTF-8 text (byte {e.start}); send JSON in UTF-8") from None
    try:
        return json.loads(text, parse_int=_bounded_int)
    except RecursionError:
        raise RequestError(400, "request body is nested too deeply to be a request") from None
    except json.JSONDecodeError as e:
        raise RequestError(400, f"request body is not valid JSON: {e}") from None


class JSONRequest(Request):
    """A request whose body is read with the app's size cap and parsed with `parse_json`."""

    async def body(self) -> bytes:
        if not hasattr(self, "_body"):
            limit: int = self.app.state.max_request_bytes
            declared = self.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise RequestError(413, f"request body of {declared} bytes is over the limit of {limit} bytes")
            body = bytearray()
            async for chunk in self.stream():
                body += chunk
                if len(body) > limit:
                    raise RequestError(413, f"request body is over the limit of {limit} bytes")
            self._body = bytes(body)
        return self._body

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json(await self.body())
        return self._json


class JSONRoute(APIRoute):
    """A route that reads its body through `JSONRequest` (FastAPI's documented custom-route hook)."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            return await handler(JSONRequest(request.scope, request.receive))

        return route_handler


def json_router() -> APIRouter:
    """A router for routes that a `create_json_app` app includes (the OpenAI routes of a worker)."""
    return APIRouter(route_class=JSONRoute)


# -- errors ---------------------------------------------------------------------------------------

_OPENAI_ERROR_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    503: "server_busy",
}


def _error_body(path: str, status: int, message: str, param: str | None = None) -> dict[str, Any]:
    """The JSON of an error: OpenAI's shape under `/v1/`, LLaVA's worker shape elsewhere."""
    if path.startswith("/v1/"):
        kind = "server_error" if status >= 500 else _OPENAI_ERROR_TYPES.get(status, "invalid_request_error")
        return {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return {"text": message, "error_code": status}


def _field_path(location: tuple[Any, ...]) -> str:
    """`messages.0.content` from pydantic's location, without "body" and the labels of union members
    (such as `function-after[...]` or `list[...]`, which name types, not fields)."""
    parts = [str(p) for p in location if isinstance(p, int) or str(p).isidentifier()]
    return ".".join(parts[1:] if parts[:1] == ["body"] else parts)


def _validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """Pydantic's errors as one line `field.path: problem; ...`, and the first field's path."""
    parts, fields = [], []
    for item in errors:
        field = _field_path(item["loc"])
        fields.append(field)
        if field:
            parts.append(f"{field}: {item['msg']}")
        elif item["type"] == "missing":
            parts.append("the request has no body; send a JSON object")
        else:
            parts.append(f"the request body must be a JSON object (Content-Type: application/json): {item['msg']}")
    return "invalid request: " + "; ".join(dict.fromkeys(parts)), next((f for f in fields if f), None)


def _new_request_id() -> str:
    return uuid.uuid4().hex[:16]


def _internal_error(path: str, request_id: str) -> dict[str, Any]:
    """The body of a 500: says nothing about the failure but the id under which the log has it."""
    body = _error_body(path, 500, f"internal server error (request id {request_id}); the server logged the details")
    body["request_id"] = request_id
    return body


def _install_error_handlers(app: FastAPI) -> None:
    """Every error of `app` as JSON: refused requests, bad fields, unknown routes, and unexpected failures."""

    async def refused(request: Request, error: HTTPException) -> Response:
        message = error.message if isinstance(error, RequestError) else str(error.detail)
        param = error.param if isinstance(error, RequestError) else None
        return JSONResponse(
            _error_body(request.url.path, error.status_code, message, param),
            status_code=error.status_code,
            headers=error.headers,
        )

    async def invalid(request: Request, error: RequestValidationError) -> Response:
        message, param = _validation_message(list(error.errors()))
        return JSONResponse(_error_body(request.url.path, 400, message, param), status_code=400)

    async def crashed(request: Request, error: Exception) -> Response:
        request_id = _new_request_id()
        logger.error("request %s (%s %s) failed", request_id, request.method, request.url.path, exc_info=error)
        return JSONResponse(_internal_error(request.url.path, request_id), status_code=500)

    app.add_exception_handler(HTTPException, refused)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(Exception, crashed)


class JSONApp(FastAPI):
    """A FastAPI app whose OpenAPI schema says what its error handler answers: 400, not FastAPI's 422."""

    def openapi(self) -> dict[str, Any]:
        schema = super().openapi()
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                responses = operation.get("responses", {})
                if responses.pop("422", None) is not None:
                    responses["400"] = {"description": "Invalid request: the message names the field at fault"}
        return schema


def create_json_app(title: str, max_request_bytes: int, lifespan: Any = None) -> FastAPI:
    """A FastAPI app whose routes parse capped JSON bodies and whose errors are all JSON (see module doc)."""
    app = JSONApp(title=title, lifespan=lifespan)
    app.router.route_class = JSONRoute
    app.state.max_request_bytes = max_request_bytes
    _install_error_handlers(app)
    return app


def bearer_token_matches(request: Request, key: str) -> bool:
    """Whether the request carries `Authorization: Bearer <key>` (compared in constant time)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())


async def guarded_stream(
    chunks: AsyncIterator[T], path: str, final_error: Callable[[dict[str, Any]], T]
) -> AsyncIterator[T]:
    """Relay a response stream; an unexpected failure ends it with one last error chunk (a logged 500)
    instead of a cut connection, which the client could not tell from a network fault."""
    try:
        async for chunk in chunks:
            yield chunk
    except Exception:
        request_id = _new_request_id()
        logger.exception("request %s (%s) failed while streaming", request_id, path)
        yield final_error(_internal_error(path, request_id))


# -- clients that go away -------------------------------------------------------------------------


async def _disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless(work: Awaitable[T], stop: Awaitable[object]) -> T | None:
    """`await work`, unless `stop` completes first: then `work` is cancelled and None returned."""
    work_task = asyncio.ensure_future(work)
    stop_task = asyncio.ensure_future(stop)
    try:
        await asyncio.wait({work_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop_task.cancel()
        if not work_task.done():
            work_task.cancel()
            with suppress(asyncio.CancelledError):
                await work_task
    return None if work_task.cancelled() else work_task.result()


async def until_disconnected(request: Request, awaitable: Awaitable[T]) -> T | None:
    """`await awaitable`, unless the client disconnects first: then it is cancelled and None returned.

    Starlette cancels a streaming response when its client leaves, but a handler that waits for a whole
    answer would wait on; this watches the connection while it waits. Call it after the body was read.
    """
    return await unless(awaitable, _disconnect(request))


# -- running servers ------------------------------------------------------------------------------


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
