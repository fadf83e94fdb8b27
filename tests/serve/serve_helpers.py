"""Helpers for the serving tests: real uvicorn servers on 127.0.0.1 on free ports, tiny images."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image

from llava.serve import controller as controller_mod
from llava.serve import model_worker
from llava.serve.http import BackgroundServer, find_free_port


def png_b64(size: tuple[int, int] = (60, 40), color: tuple[int, int, int] = (220, 30, 30)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def start_worker(
    model_path: Path, controller_url: str | None = None, extra: Sequence[str] = (), heartbeat: float = 0.2
) -> BackgroundServer:
    """A model worker serving `model_path` on CPU; registered with `controller_url` when given."""
    port = find_free_port()
    argv = ["--model-path", str(model_path), "--device", "cpu", "--host", "127.0.0.1", "--port", str(port), *extra]
    if controller_url is None:
        argv.append("--no-register")
    else:
        argv += ["--controller", controller_url, "--heartbeat-interval", str(heartbeat)]
    app = model_worker.build_app(model_worker.parse_args(argv))
    return BackgroundServer(app, port=port).start()


def start_controller(heartbeat_expiration: float = 30.0, dispatch: str = "shortest_queue") -> BackgroundServer:
    controller = controller_mod.Controller(dispatch, heartbeat_expiration, seed=0)
    return BackgroundServer(controller_mod.create_app(controller)).start()


def wait_for(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
