"""An OpenAI-compatible API: `GET /v1/models` and `POST /v1/chat/completions`.

Served by every model worker, or on its own:

    python -m llava.serve.openai_api --model-path mucai/llava-v1.5-7b-m3 --port 8000 [--api-key KEY]

Messages use the OpenAI format (string content, or `text` and `image_url` parts with `data:` base64
URLs; http(s) URLs only with `--allow-remote-images`). `stream: true` answers with server-sent events.
The visual-token budget is the extra field `matryoshka_vis_token_scale` (with the `openai` client:
`extra_body={"matryoshka_vis_token_scale": 9}`), and `usage.prompt_tokens` counts the visual tokens
the images really cost at that budget (also reported as `usage.visual_tokens`).
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from llava.generation import ChatTurn, build_chat_prompt
from llava.serve.engine import PreparedRequest, SamplingParams
from llava.serve.errors import RequestError
from llava.serve.http import parse_model, read_json_body, run_server
from llava.serve.service import (
    ChunkStream,
    ModelService,
    add_model_arguments,
    add_serving_arguments,
    service_from_args,
)

logger = logging.getLogger(__name__)


class ImageURL(BaseModel):
    model_config = ConfigDict(extra="ignore")
    url: str
    detail: str | None = None


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageURL | str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The fields of OpenAI's chat completion request this server honours; others are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1)
    matryoshka_vis_token_scale: Any = None


def openai_error(error: RequestError) -> JSONResponse:
    kinds = {401: "authentication_error", 404: "not_found_error", 413: "request_too_large", 503: "server_busy"}
    body = {
        "error": {
            "message": error.message,
            "type": kinds.get(error.status, "invalid_request_error"),
            "param": error.param,
            "code": error.status,
        }
    }
    return JSONResponse(body, status_code=error.status)


def _turns(messages: Sequence[ChatMessage]) -> list[ChatTurn]:
    turns = []
    for i, message in enumerate(messages):
        turn = ChatTurn(message.role)
        content = message.content
        if isinstance(content, str) or content is None:
            turn.parts.append(("text", content or ""))
        else:
            for part in content:
                if part.type == "text":
                    turn.parts.append(("text", part.text or ""))
                elif part.image_url is None:
                    raise RequestError(400, f"messages[{i}]: an image_url part needs an image_url", "messages")
                else:
                    url = part.image_url if isinstance(part.image_url, str) else part.image_url.url
                    turn.parts.append(("image", url))
        if turn.role != "user" and any(kind == "image" for kind, _ in turn.parts):
            raise RequestError(400, f"messages[{i}]: only user messages may carry images", "messages")
        turns.append(turn)
    return turns


def _usage(prepared: PreparedRequest, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prepared.prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prepared.prompt_tokens + completion_tokens,
        "visual_tokens": prepared.visual_tokens,
    }


def create_openai_router(service: ModelService, api_key: str | None = None) -> APIRouter:
    """The `/v1` routes over a model service; with `api_key`, requests must send `Authorization: Bearer KEY`."""
    router = APIRouter()

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise RequestError(401, "invalid or missing API key (send 'Authorization: Bearer KEY')")

    @router.get("/v1/models")
    async def list_models(request: Request) -> Any:
        try:
            check_key(request)
        except RequestError as e:
            return openai_error(e)
        card = {
            "id": service.model_name,
            "object": "model",
            "created": 0,
            "owned_by": "llava",
            "matryoshka": service.engine.info(),
        }
        return {"object": "list", "data": [card]}

    async def start(request: Request) -> tuple[ChatCompletionRequest, PreparedRequest, ChunkStream]:
        """Check, parse, validate and queue a chat completion; raises `RequestError`."""
        check_key(request)
        body = parse_model(ChatCompletionRequest, await read_json_body(request, service.limits.max_request_bytes))
        if body.model != service.model_name:
            raise RequestError(
                404, f"model {body.model!r} is not served here; available: [{service.model_name!r}]", "model"
            )
        try:
            prompt, images, template_stop = build_chat_prompt(_turns(body.messages), service.engine.conv_mode)
        except ValueError as e:
            raise RequestError(400, str(e), "messages") from None
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if template_stop:
            stop.append(template_stop)
        max_tokens = body.max_completion_tokens or body.max_tokens or service.engine.max_new_tokens_limit
        sampling = SamplingParams(body.temperature, body.top_p, max_tokens, tuple(stop))
        prepared = await service.prepare(prompt, images, body.matryoshka_vis_token_scale, sampling)
        return body, prepared, service.open_stream(prepared)

    @router.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        try:
            with service.admission():
                body, prepared, stream = await start(request)
        except RequestError as e:
            logger.info("refused a chat completion: %s", e)
            return openai_error(e)

        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            events = _sse_events(stream, prepared, completion_id, created, service.model_name, include_usage)
            return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

        final = await stream.final()
        if final.finish_reason == "error":
            return openai_error(RequestError(500, final.error or "generation failed"))
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": service.model_name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": final.text},
                    "finish_reason": final.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": _usage(prepared, final.completion_tokens),
            "matryoshka_vis_token_scale": prepared.scale,
        }

    return router


async def _sse_events(
    stream: Any, prepared: PreparedRequest, completion_id: str, created: int, model: str, include_usage: bool
) -> AsyncIterator[str]:
    """Chunks as OpenAI sends them: a role delta, content deltas, a finish chunk, optional usage, [DONE]."""

    def event(choices: list[dict[str, Any]], **extra: Any) -> str:
        payload = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": choices,
            **extra,
        }
        return f"data: {json.dumps(payload)}\n\n"

    yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
    async for chunk in stream:
        if chunk.error is not None:
            yield f"data: {json.dumps({'error': {'message': chunk.error, 'type': 'server_error', 'code': 500}})}\n\n"
            break
        if chunk.delta:
            yield event([{"index": 0, "delta": {"content": chunk.delta}, "finish_reason": None}])
        if chunk.done:
            yield event(
                [{"index": 0, "delta": {}, "finish_reason": chunk.finish_reason}],
                matryoshka_vis_token_scale=prepared.scale,
            )
            if include_usage:
                yield event([], usage=_usage(prepared, chunk.completion_tokens))
    yield "data: [DONE]\n\n"


def create_app(service: ModelService, api_key: str | None = None) -> FastAPI:
    """A standalone OpenAI-compatible server over one model service."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(title=f"LLaVA/M3 OpenAI-compatible API: {service.model_name}", lifespan=lifespan)
    app.state.service = service
    app.include_router(create_openai_router(service, api_key=api_key))
    return app


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="OpenAI-compatible LLaVA/M3 server", prog="python -m llava.serve.openai_api"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--log-level", default="info")
    add_model_arguments(parser)
    add_serving_arguments(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_server(create_app(service_from_args(args), api_key=args.api_key), args.host, args.port, args.log_level)


if __name__ == "__main__":
    main()
