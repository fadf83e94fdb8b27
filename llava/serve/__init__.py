"""Serving M3: terminal chat, controller + model workers, the Gradio demo and an OpenAI-compatible API.

Layout (one idea per file):
    errors.py            `RequestError`: a client mistake with its HTTP status
    media.py             image payloads (base64, data: URLs, opt-in http(s)) → PIL images, with size limits
    engine.py            one model: validate and budget a request, generate a batch with per-row scales,
                         sampling and stop conditions, streaming text as it is produced
    batcher.py           `BatchScheduler`: a thread that groups concurrent requests into batches
    service.py           `ModelService`: engine + scheduler + limits, the async face the HTTP servers use
    http.py              body reading with a size cap, JSON errors, running uvicorn (also in a thread)
    controller.py        worker registry, heartbeats, dispatch, stream proxy
    model_worker.py      a model behind `/worker_generate_stream` (and the OpenAI routes)
    openai_api.py        `/v1/models`, `/v1/chat/completions`; standalone with `--model-path`
    gradio_web_server.py the web demo with a visual-token budget selector
    cli.py               terminal chat

Only `engine.py`, `batcher.py`, `service.py`, `model_worker.py`, `openai_api.py` and `cli.py` import torch;
the controller and the web server do not.
"""
