"""Helpers for the serving tests: real uvicorn servers on 127.0.0.1 on free ports, tiny images."""

from __future__ import annotations

import base64
import http.server
import io
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
from PIL import Image

from llava.serve import controller as controller_mod
from llava.serve import model_worker
from llava.serve.http import BackgroundServer, find_free_port

REPO = Path(__file__).resolve().parents[2]


def png_b64(size: tuple[int, int] = (60, 40), color: tuple[int, int, int] = (220, 30, 30)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def worker_argv(
    model_path: Path, port: int, controller_url: str | None = None, heartbeat: float = 0.2, extra: Sequence[str] = ()
) -> list[str]:
    """The command line of a worker serving `model_path` on CPU; registered with `controller_url` when given."""
    argv = ["--model-path", str(model_path), "--device", "cpu", "--host", "127.0.0.1", "--port", str(port), *extra]
    if controller_url is None:
        return [*argv, "--no-register"]
    return [*argv, "--controller", controller_url, "--heartbeat-interval", str(heartbeat)]


def start_worker(
    model_path: Path, controller_url: str | None = None, extra: Sequence[str] = (), heartbeat: float = 0.2
) -> BackgroundServer:
    """A model worker in a thread of this process (see `worker_argv`)."""
    port = find_free_port()
    app = model_worker.build_app(
        model_worker.parse_args(worker_argv(model_path, port, controller_url, heartbeat, extra))
    )
    return BackgroundServer(app, port=port).start()


def start_controller(
    heartbeat_expiration: float = 30.0,
    dispatch: str = "shortest_queue",
    worker_key: str | None = None,
    worker_read_timeout: float = 300.0,
) -> BackgroundServer:
    controller = controller_mod.Controller(dispatch, heartbeat_expiration, seed=0)
    app = controller_mod.create_app(controller, worker_key=worker_key, worker_read_timeout=worker_read_timeout)
    return BackgroundServer(app).start()


def wait_for(
    condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition", interval: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def spawn_worker(
    model_path: Path, log: Path, controller_url: str | None = None, extra: Sequence[str] = (), worker_key: str = ""
) -> tuple[subprocess.Popen, str]:
    """`python -m llava.serve.model_worker` in its own process (to be killed or stopped), up and answering.

    The key travels in $LLAVA_WORKER_KEY, as the docs advise; the output goes to `log`.
    """
    port = find_free_port()
    argv = [sys.executable, "-m", "llava.serve.model_worker", *worker_argv(model_path, port, controller_url)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "LLAVA_WORKER_KEY": worker_key}
    with log.open("wb") as out:
        process = subprocess.Popen([*argv, *extra, "--log-level", "warning"], env=env, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"the worker exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            return httpx.post(f"{url}/worker_get_status", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, timeout=180, what=f"the worker process on port {port}")
    return process, url


@contextmanager
def serve_folder(folder: Path) -> Iterator[str]:
    """A plain http server of `folder`'s files on 127.0.0.1 (a remote site for the URL tests); yields its URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
