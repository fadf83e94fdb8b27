"""The web demo: its handlers against live servers, and the page itself in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from serve_helpers import start_controller, start_worker, wait_for
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from llava.data import shapes
from llava.scale_policy import ScalePolicy
from llava.serve import gradio_web_server as web
from llava.serve.http import BackgroundServer, find_free_port

REPO = Path(__file__).resolve().parents[2]
SHAPES_MODEL = REPO / "playground" / "shapes-m3-tiny"
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-gpu"]


@pytest.fixture(scope="module")
def stack(tiny_llava_pad: Path, tiny_llava_anyres: Path) -> Iterator[tuple[BackgroundServer, list[BackgroundServer]]]:
    """A controller with two workers: the pad and the anyres tiny checkpoints."""
    controller = start_controller()
    workers = [start_worker(path, controller.url) for path in (tiny_llava_pad, tiny_llava_anyres)]
    with httpx.Client(base_url=controller.url) as client:
        wait_for(lambda: len(client.post("/list_models").json()["models"]) == 2, what="both workers")
    yield controller, workers
    for worker in workers:
        worker.stop()
    controller.stop()


def last_answer(states: list[tuple]) -> str:
    state, chatbot, _ = states[-1]
    return chatbot[-1]["content"]


def test_handlers_stream_an_answer_at_the_chosen_budget(stack, tiny_llava_pad: Path) -> None:
    controller, _ = stack
    demo = web.WebDemo(web.ControllerClient(controller.url), examples_dir=None)
    model = tiny_llava_pad.name
    image = Image.new("RGB", (80, 60), (0, 90, 200))
    state, chatbot, text, box, _ = demo.add_text(None, "What is in the image?", image, "Default")
    assert text == "" and box is None and chatbot[0]["role"] == "user"
    states = list(demo.http_bot(state, model, 9, 0.0, 1.0, 6))
    assert len(states) >= 3  # the cursor, then the answer growing
    assert not last_answer(states).endswith(web.CURSOR) and last_answer(states)
    assert states[-1][2].startswith("9 visual tokens at budget 9")
    assert demo.update_budget(model, 36, None, "Default", states[-1][0]).startswith(
        "**36 visual tokens** for this image"
    )

    state, _, _ = demo.regenerate(states[-1][0])
    again = list(demo.http_bot(state, model, 9, 0.0, 1.0, 6))
    assert last_answer(again) == last_answer(states)  # greedy: the same answer again


def test_the_compare_view_answers_at_every_budget_as_the_chat_does(stack, tiny_llava_pad: Path) -> None:
    controller, _ = stack
    demo = web.WebDemo(web.ControllerClient(controller.url), examples_dir=None)
    model, image, question = tiny_llava_pad.name, Image.new("RGB", (80, 60), (0, 90, 200)), "What is in the image?"
    status, *cells = demo.compare(model, image, question, 6)
    pictures, answers = cells[: len(web.BUDGETS)], cells[len(web.BUDGETS) :]
    assert status.startswith("Every budget from one pass of the vision tower (")
    side = 48 * 7  # the tiny tower's input (the image padded to a square), enlarged for the page
    assert all(isinstance(picture, Image.Image) and picture.size == (side, side) for picture in pictures)
    for scale, picture in zip(web.BUDGETS, pictures):
        assert len(picture.getcolors(1 << 20)) <= max(scale, 2)  # blocks of one colour (pad and image)
    for scale, answer in zip(web.BUDGETS, answers):
        assert answer.startswith(f"**{scale} visual tokens per image** ({scale} in all) · ")
    for scale, answer in [(9, answers[1]), (576, answers[4])]:
        state, *_ = demo.add_text(None, question, image, "Default")
        chat = last_answer(list(demo.http_bot(state, model, scale, 0.0, 1.0, 6)))
        assert answer.split("\n\n", 1)[1] == chat

    empty = (*[None] * len(web.BUDGETS), *[""] * len(web.BUDGETS))
    assert demo.compare(model, None, question, 6) == ("**Upload an image to compare the budgets.**", *empty)
    assert demo.compare("no-such-model", image, question, 6)[0].startswith("**No worker is serving no-such-model")


def test_a_refused_request_shows_the_workers_message(stack, tiny_llava_pad: Path) -> None:
    controller, _ = stack
    demo = web.WebDemo(web.ControllerClient(controller.url), examples_dir=None)
    state, *_ = demo.add_text(None, "What is it?", Image.new("RGB", (30, 30)), "Default")
    answer = last_answer(list(demo.http_bot(state, tiny_llava_pad.name, 10, 0.2, 0.7, 4)))
    assert answer.startswith("**Error 400:**") and "valid values" in answer


def test_the_web_server_and_controller_do_not_import_torch() -> None:
    code = "import sys, llava.serve.gradio_web_server, llava.serve.controller; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.stdout.strip() == "False", result.stderr


def test_budget_text_counts_anyres_crops(stack, tiny_llava_anyres: Path) -> None:
    controller, _ = stack
    demo = web.WebDemo(web.ControllerClient(controller.url), examples_dir=None)
    text = demo.update_budget(tiny_llava_anyres.name, 9, Image.new("RGB", (96, 96)), "Default")
    assert text.startswith("**51 visual tokens** for this image: 9 per crop (3×3)")
    assert web.budget_text(144, None, False) == "**144 visual tokens** per image (12×12 grid per crop)"


def test_the_ui_says_when_a_worker_is_gone(stack) -> None:
    controller, _ = stack
    demo = web.WebDemo(web.ControllerClient(controller.url), examples_dir=None)
    state, *_ = demo.add_text(None, "hello", None, "Default")
    gone = list(demo.http_bot(state, "no-such-model", 9, 0.2, 0.7, 4))
    assert "No worker is serving no-such-model" in last_answer(gone)

    dead = f"http://127.0.0.1:{find_free_port()}"
    status = {"model_names": ["ghost-m3"], "speed": 1, "queue_length": 0}
    httpx.post(f"{controller.url}/register_worker", json={"worker_name": dead, "worker_status": status})
    state, *_ = demo.add_text(None, "hello", None, "Default")
    died = list(demo.http_bot(state, "ghost-m3", 9, 0.2, 0.7, 4))
    assert "did not answer (it may have died)" in last_answer(died)

    unreachable = web.WebDemo(web.ControllerClient(dead), examples_dir=None)
    assert unreachable.client.list_models() == []
    state, *_ = unreachable.add_text(None, "hello", None, "Default")
    assert "No model is available" in last_answer(list(unreachable.http_bot(state, None, 9, 0.2, 0.7, 4)))


def test_the_demo_answers_with_the_shipped_shapes_model(tmp_path: Path) -> None:
    # Issue 4: the web demo works with playground/shapes-m3-tiny, not only with random test models.
    # The same handlers the page calls, against a real controller and a worker serving the checkpoint.
    records = shapes.generate_split(tmp_path, "test", 1, shapes.DEFAULT_SEEDS["test"])
    gold = {r["conversations"][0]["value"].split("\n", 1)[1]: r["conversations"][1]["value"] for r in records}
    question = "What color is the background?"
    image = Image.open(tmp_path / records[0]["image"]).convert("RGB")
    controller = start_controller()
    worker = start_worker(SHAPES_MODEL, controller.url)
    try:
        demo = web.WebDemo(web.ControllerClient(controller.url), examples_dir=None)
        wait_for(lambda: demo.client.list_models() == [SHAPES_MODEL.name], what="the shapes worker")
        for scale in (576, 1):
            state, *_ = demo.add_text(None, question, image, "Default")
            states = list(demo.http_bot(state, SHAPES_MODEL.name, scale, 0.0, 1.0, 4))
            assert last_answer(states) == gold[question], (scale, last_answer(states))
            assert states[-1][2].startswith(f"{scale} visual tokens at budget {scale}")
        check_auto_in_the_demo(demo, question, image)
    finally:
        worker.stop()
        controller.stop()


def check_auto_in_the_demo(demo: web.WebDemo, question: str, image: Image.Image) -> None:
    """ "auto" in the budget control: the line under it shows the calibrated policy, and the status line the
    budget that answered, whose fixed answer is the same."""
    policy = json.loads((SHAPES_MODEL / "matryoshka_policy.json").read_text())["policy"]
    line = demo.update_budget(SHAPES_MODEL.name, "auto", image, "Default")
    assert line.startswith("**auto**") and f"trying {ScalePolicy.from_dict(policy).describe()} (calibrated" in line
    state, *_ = demo.add_text(None, question, image, "Default")
    auto = list(demo.http_bot(state, SHAPES_MODEL.name, "auto", 0.0, 1.0, 4))
    status = re.fullmatch(r"(\d+) visual tokens at budget (\d+) \(chosen by auto; (\d+) read over .*", auto[-1][2])
    assert status is not None, auto[-1][2]
    visual, used, read = map(int, status.groups())
    assert visual == used and used in policy["ladder"] and read >= visual
    state, *_ = demo.add_text(None, question, image, "Default")
    fixed = list(demo.http_bot(state, SHAPES_MODEL.name, used, 0.0, 1.0, 4))
    assert last_answer(auto) == last_answer(fixed)


def in_headless_chromium(controller_url: str, drive: Callable[[Any, str], None], screenshot: str) -> None:
    """Serve the demo on a free port and run `drive(page, url)` in headless Chromium; a failure leaves a
    screenshot in test-artifacts/."""
    # CI sets M3_REQUIRE_BROWSER=1 so a missing browser fails the run instead of hiding the test.
    if os.environ.get("M3_REQUIRE_BROWSER") == "1":
        from playwright import sync_api

        assert shutil.which(CHROMIUM), f"{CHROMIUM} is missing: scripts/ensure_chromium.sh should have installed it"
    else:
        sync_api = pytest.importorskip("playwright.sync_api")
        if not os.path.exists(CHROMIUM) or shutil.which(CHROMIUM) is None:
            pytest.skip(f"{CHROMIUM} is missing: run scripts/ensure_chromium.sh")
    port = find_free_port()
    demo = web.build_demo(web.parse_args(["--controller-url", controller_url]))
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, ssr_mode=False, quiet=True)
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                try:
                    drive(page, f"http://127.0.0.1:{port}/")
                except Exception:
                    ARTIFACTS.mkdir(exist_ok=True)
                    page.screenshot(path=str(ARTIFACTS / f"{screenshot}_failure.png"), full_page=True)
                    raise
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / f"{screenshot}.png"), full_page=True)
            finally:
                browser.close()
    finally:
        demo.close()


@pytest.mark.slow
def test_the_page_in_headless_chromium(stack, tiny_llava_pad: Path) -> None:
    controller, _ = stack
    in_headless_chromium(
        controller.url, lambda page, url: drive_the_page(page, url, tiny_llava_pad.name), "gradio_chat"
    )


@pytest.mark.slow
def test_the_compare_view_in_headless_chromium(stack, tiny_llava_pad: Path) -> None:
    controller, _ = stack
    in_headless_chromium(
        controller.url, lambda page, url: drive_the_compare_view(page, url, tiny_llava_pad.name), "gradio_compare"
    )


def drive_the_compare_view(page, url: str, model: str) -> None:
    """Pick the model, open the compare tab, upload an image, ask, and wait for an answer and a picture per budget."""
    page.set_default_timeout(60_000)
    page.goto(url)
    page.locator("#model_selector input").click()
    page.get_by_role("option", name=model).click()
    page.get_by_role("tab", name="Compare budgets").click()
    page.locator("#compare_image input[type=file]").set_input_files(str(REPO / "images" / "shapes.png"))
    page.locator("#compare_question textarea").fill("What is in the image?")
    page.locator("#compare_run").click()
    page.wait_for_function(
        "document.querySelector('#compare_status').innerText.includes('one pass of the vision tower')"
    )
    for scale in web.BUDGETS:
        answer = page.locator(f"#compare_answer_{scale}")
        assert answer.inner_text().startswith(f"{scale} visual tokens per image ({scale} in all)"), scale
        assert "ms" in answer.inner_text()
        picture = page.locator(f"#compare_picture_{scale} img")
        picture.wait_for()
        assert picture.evaluate("img => img.complete && img.naturalWidth") == 48 * 7  # the tiny tower's side, enlarged
    assert page.locator("[id^=compare_answer_]").count() == page.locator(".compare_picture img").count() == 5


def drive_the_page(page, url: str, model: str) -> None:
    """Pick the model, upload an image, pick the 9-token budget, ask, and wait for the streamed answer; then
    ask again with the budget "auto"."""
    page.set_default_timeout(60_000)
    page.goto(url)
    page.locator("#question textarea").wait_for()
    page.locator("#model_selector input").click()
    page.get_by_role("option", name=model).click()
    page.locator("#imagebox input[type=file]").set_input_files(str(REPO / "images" / "shapes.png"))
    page.locator("#budget").get_by_text("9 (3×3)").click()
    page.wait_for_function("document.querySelector('#budget_info').innerText.includes('9 visual tokens')")
    page.get_by_text("Parameters").click()
    set_number(page.locator("#temperature input[type=number]"), "0")  # greedy: the same answer every run
    set_number(page.locator("#max_tokens input[type=number]"), "24")
    page.locator("#question textarea").fill("What is in the image?")
    page.locator("#send").click()
    page.wait_for_function(
        "document.querySelector('#status') && document.querySelector('#status').innerText.includes('new tokens')"
    )
    answer = page.locator("#chatbot [data-testid=bot]").last
    assert answer.inner_text().strip() and not answer.inner_text().strip().endswith(web.CURSOR)
    status = page.locator("#status").inner_text()
    assert "9 visual tokens at budget 9" in status and "24 new tokens" in status
    assert page.locator("#chatbot [data-testid=user] img").count() == 1  # the uploaded image is in the chat

    # "auto": the worker has no calibrated policy, and the random model is sure of nothing, so every rung is tried.
    page.locator("#budget").get_by_text("auto", exact=True).click()
    page.wait_for_function("document.querySelector('#budget_info').innerText.includes('uncalibrated thresholds')")
    page.locator("#question textarea").fill("And now?")
    page.locator("#send").click()
    page.wait_for_function("document.querySelector('#status').innerText.includes('chosen by auto')")
    status = page.locator("#status").inner_text()
    assert status.startswith("576 visual tokens at budget 576 (chosen by auto; 766 read over the budgets tried)")


def set_number(field, value: str) -> None:
    """Type into a Gradio number box until the value sticks (the accordion may re-render it while opening)."""
    for _ in range(20):
        field.fill(value)
        field.press("Enter")
        field.blur()
        field.page.wait_for_timeout(150)
        if field.input_value() == value:
            return
    raise AssertionError(f"the number box kept {field.input_value()!r} instead of {value!r}")


def broken_backend() -> Starlette:
    """A controller and two workers that answer nonsense: HTML, JSON of the wrong shape, unreadable chunks."""

    async def list_models(request: Request) -> Response:
        return JSONResponse({"models": ["garbled", "crashing", 5]})

    async def worker_address(request: Request) -> Response:
        model = (await request.json())["model"]
        return JSONResponse({"address": f"{request.base_url}{model}".rstrip("/")})

    async def garbled_stream(request: Request) -> Response:
        return Response(
            b'{"text": "USER: hi", "error_code": 0}\0not json at all\0', media_type="application/octet-stream"
        )

    async def crashing_stream(request: Request) -> Response:
        return PlainTextResponse("Internal Server Error", status_code=500)

    async def html(request: Request) -> Response:
        return HTMLResponse("<html>a proxy's error page</html>", status_code=502)

    return Starlette(
        routes=[
            Route("/list_models", list_models, methods=["POST"]),
            Route("/get_worker_address", worker_address, methods=["POST"]),
            Route("/garbled/worker_generate_stream", garbled_stream, methods=["POST"]),
            Route("/crashing/worker_generate_stream", crashing_stream, methods=["POST"]),
            Route("/{path:path}", html, methods=["GET", "POST"]),
        ]
    )


def test_backends_that_answer_nonsense_show_as_messages() -> None:
    with BackgroundServer(broken_backend()) as backend:
        demo = web.WebDemo(web.ControllerClient(backend.url), examples_dir=None)
        assert demo.client.list_models() == ["crashing", "garbled"]  # the refresh failed, the number was dropped
        image = Image.new("RGB", (40, 30))
        for model in ("garbled", "crashing"):
            assert demo.update_budget(model, 9, image, "Default") == web.budget_text(9, None, True)
        answers = {}
        for model in ("garbled", "crashing"):
            state, *_ = demo.add_text(None, "hi", None, "Default")
            answers[model] = last_answer(list(demo.http_bot(state, model, 9, 0.0, 1.0, 4)))
        status, *cells = demo.compare("garbled", image, "hi", 4)
    assert answers["garbled"] == "**Error 502:** the worker sent a chunk the demo cannot read"
    assert answers["crashing"] == "**Error 500:** Internal Server Error"
    assert status == "**Error 502: <html>a proxy's error page</html>**" and not any(cells)
