"""An OpenAI-compatible API: `GET /v1/models` and `POST /v1/chat/completions`.

Served by every model worker, or on its own:

    python -m llava.serve.openai_api --model-path mucai/llava-v1.5-7b-m3 --port 8000 [--api-key KEY]

Messages use the OpenAI format (string content, or `text`, `image_url` and `video_url` parts with `data:`
base64 URLs; http(s) URLs only with `--allow-remote-images`). A video is answered about as one image, the
grid of a few of its frames (IG-VLM), at the request's budget. `stream: true` answers with server-sent events.
The visual-token budget is the extra field `matryoshka_vis_token_scale` (with the `openai` client:
`extra_body={"matryoshka_vis_token_scale": 9}`, or "auto" for the checkpoint's calibrated policy), and
`usage.prompt_tokens` counts the visual tokens the images really cost at the budget that answered (also
reported as `usage.visual_tokens`, beside `matryoshka_vis_token_scale_used`; see `answer_usage`). A client that hangs up
before a non-streamed answer is complete cancels its generation, as one that closes a stream does.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import Field

from llava.generation import ChatTurn, SamplingParams, build_chat_prompt
from llava.serve.args import parse_openai_api_args as parse_args
from llava.serve.backends import backend_from_args
from llava.serve.backends.base import AnswerStream, ServingBackend
from llava.serve.engine import GenerationChunk, PreparedRequest, answer_usage
from llava.serve.http import (
    RequestError,
    RequestModel,
    Text,
    bearer_token_matches,
    create_json_app,
    guarded_stream,
    json_router,
    run_server,
    until_disconnected,
)
from llava.serve.protocol import MAX_TOKENS, Budget, ModelName, Temperature, TopP, request_budget

logger = logging.getLogger(__name__)


class ImageURL(RequestModel):
    url: Text
    detail: Text | None = None


class VideoURL(RequestModel):
    url: Text


class ContentPart(RequestModel):
    type: Literal["text", "image_url", "video_url"]
    text: Text | None = None
    image_url: ImageURL | Text | None = None
    video_url: VideoURL | Text | None = None


class ChatMessage(RequestModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[ContentPart] | None = None


class StreamOptions(RequestModel):
    include_usage: bool = False


class ChatCompletionRequest(RequestModel):
    """The fields of OpenAI's chat completion request this server honours; others are ignored."""

    model: ModelName
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    stop: Text | list[Text] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1)
    matryoshka_vis_token_scale: Budget | None = None


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
                    continue
                media = getattr(part, part.type)  # the part's image_url or video_url
                if media is None:
                    raise RequestError(
                        400, f"messages[{i}]: a part of type {part.type!r} needs the field {part.type!r}", "messages"
                    )
                url = media if isinstance(media, str) else media.url
                turn.parts.append((part.type.removesuffix("_url"), url))
        if turn.role != "user" and any(kind != "text" for kind, _ in turn.parts):
            raise RequestError(400, f"messages[{i}]: only user messages may carry images or videos", "messages")
        turns.append(turn)
    return turns


def create_openai_router(service: ServingBackend, api_key: str | None = None) -> APIRouter:
    """The `/v1` routes over a model service; with `api_key`, requests must send `Authorization: Bearer KEY`."""

    def check_key(request: Request) -> None:
        if api_key is not None and not bearer_token_matches(request, api_key):
            raise RequestError(401, "invalid or missing API key (send 'Authorization: Bearer KEY')")

    router = json_router()

    @router.get("/v1/models", dependencies=[Depends(check_key)])
    async def list_models() -> dict[str, Any]:
        card = {
            "id": service.model_name,
            "object": "model",
            "created": 0,
            "owned_by": "llava",
            "matryoshka": service.info(),
        }
        return {"object": "list", "data": [card]}

    async def start(body: ChatCompletionRequest) -> tuple[PreparedRequest, AnswerStream]:
        """Validate and queue a chat completion; raises `RequestError`."""
        if body.model != service.model_name:
            raise RequestError(
                404, f"model {body.model!r} is not served here; available: [{service.model_name!r}]", "model"
            )
        try:
            prompt, images, template_stop = build_chat_prompt(_turns(body.messages), service.rules.conv_mode)
        except ValueError as e:
            raise RequestError(400, str(e), "messages") from None
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if template_stop:
            stop.append(template_stop)
        max_tokens = body.max_completion_tokens or body.max_tokens or service.rules.max_new_tokens_limit
        sampling = SamplingParams(body.temperature, body.top_p, max_tokens, tuple(stop))
        prepared = await service.prepare(prompt, images, request_budget(body.matryoshka_vis_token_scale), sampling)
        return prepared, await service.open_stream(prepared)

    @router.post("/v1/chat/completions", dependencies=[Depends(check_key)])
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        """A chat completion, streamed as server-sent events with `stream: true`."""
        with service.admission():
            prepared, stream = await start(body)

        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            events = _sse_events(stream, prepared, completion_id, created, service.model_name, include_usage)
            events = guarded_stream(events, "/v1/chat/completions", _sse_error)
            return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

        final = await until_disconnected(request, stream.final())
        if final is None:  # the client hung up; its generation was cancelled and nobody reads this
            return Response(status_code=499)
        if final.finish_reason == "error":
            raise RequestError(500, final.error or "generation failed")
        return _completion(completion_id, created, service.model_name, prepared, final)

    return router


def _completion(
    completion_id: str, created: int, model: str, prepared: PreparedRequest, final: GenerationChunk
) -> dict[str, Any]:
    """A whole (non-streamed) chat completion, as OpenAI answers it."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": final.text},
                "finish_reason": final.finish_reason,
                "logprobs": None,
            }
        ],
        **_budget_fields(prepared, final),
    }


def _budget_fields(prepared: PreparedRequest, final: GenerationChunk) -> dict[str, Any]:
    """What the last chunk or the whole response adds to OpenAI's fields: `usage`, the budget asked for and
    the budget that answered (they differ for "auto")."""
    usage = answer_usage(prepared, final)
    return {
        "usage": usage,
        "matryoshka_vis_token_scale": usage["matryoshka_vis_token_scale"],
        "matryoshka_vis_token_scale_used": usage["matryoshka_vis_token_scale_used"],
    }


def _sse_error(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body)}\n\n"


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
            yield _sse_error({"error": {"message": chunk.error, "type": "server_error", "code": 500}})
            break
        if chunk.delta:
            yield event([{"index": 0, "delta": {"content": chunk.delta}, "finish_reason": None}])
        if chunk.done:
            fields = _budget_fields(prepared, chunk)
            usage = fields.pop("usage")
            yield event([{"index": 0, "delta": {}, "finish_reason": chunk.finish_reason}], **fields)
            if include_usage:
                yield event([], usage=usage)
    yield "data: [DONE]\n\n"


def create_app(service: ServingBackend, api_key: str | None = None) -> FastAPI:
    """A standalone OpenAI-compatible server over one serving backend."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = create_json_app(
        f"LLaVA/M3 OpenAI-compatible API: {service.model_name}", service.limits.max_request_bytes, lifespan=lifespan
    )
    app.state.service = service
    app.include_router(create_openai_router(service, api_key=api_key))
    return app


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_server(create_app(backend_from_args(args), api_key=args.api_key), args.host, args.port, args.log_level)


if __name__ == "__main__":
    main()
