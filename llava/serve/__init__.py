"""Serving M3: terminal chat, controller + model workers, the Gradio demo and an OpenAI-compatible API.

Layout (one idea per file):
    controller.py        worker registry (register and heartbeat need the worker key), dispatch, stream proxy
    model_worker.py      a model behind `/worker_generate_stream` (and the OpenAI routes), heartbeats to a controller
    openai_api.py        `/v1/models`, `/v1/chat/completions`; standalone with `--model-path`
    gradio_web_server.py the web demo with a visual-token budget selector
    cli.py               terminal chat
    args.py              the command-line flags of every entry point above, declared once
    protocol.py          the JSON bodies of the worker protocol (controller, worker), one pydantic model per route
    http.py              `RequestError`, the one JSON error handler, capped and checked request bodies, uvicorn
    service.py           `BatchScheduler` (a thread that batches concurrent requests) and `ModelService`
                         (engine + scheduler: the `hf` serving backend)
    engine.py            one model: validate and budget a request, generate a batch with per-row scales,
                         sampling and stop conditions (through `llava.generation`, the one prompt → generate
                         path), streaming text as it is produced
    media.py             image and video payloads (base64, data: URLs, opt-in http(s)) → PIL images (a video:
                         the grid of a few of its frames), every size bounded
    backends/            `ServingBackend`, the one interface the routes use, and the engines behind a worker:
                         `--backend hf` (service.py's `ModelService`), `vllm` (an in-process vLLM engine) and
                         `openai` (an engine running elsewhere); requests are checked once, for every engine

Only `engine.py`, `service.py`, `backends/`, `media.py` (through `llava.generation`), `model_worker.py`,
`openai_api.py` and `cli.py` import torch; the controller and the web server do not. Only `--backend vllm`
imports vLLM.
"""
