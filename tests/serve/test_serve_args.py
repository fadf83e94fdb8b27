"""The command lines of the original LLaVA/M3 README work unchanged, and every flag of its serving commands
is a real flag here; abbreviations are refused rather than read as some other flag."""

from __future__ import annotations

import shlex

import gradio as gr
import pytest

from llava.serve import args
from llava.serve import gradio_web_server as web
from llava.serve.http import find_free_port

# Copied from the "Demo" section of github.com/mu-cai/matryoshka-mm's README.
ORIGINAL_README = {
    "controller": "python -m llava.serve.controller --host 0.0.0.0 --port 30000",
    "web": "python -m llava.serve.gradio_web_server --controller http://localhost:30000 --model-list-mode reload",
    "worker": "python -m llava.serve.model_worker --host 0.0.0.0 --controller http://localhost:30000 --port 40000 "
    "--worker http://localhost:40000 --model-path mucai/llava-next-vicuna-7b-m3",
    "worker 4-bit": "python -m llava.serve.model_worker --host 0.0.0.0 --controller http://localhost:30000 "
    "--port 40000 --worker http://localhost:40000 --model-path mucai/llava-next-vicuna-7b-m3 --load-4bit",
}


def argv(command: str) -> list[str]:
    return shlex.split(command)[3:]  # after "python -m module"


def test_the_original_readme_command_lines_mean_what_they_meant() -> None:
    controller = args.parse_controller_args(argv(ORIGINAL_README["controller"]))
    assert (controller.host, controller.port) == ("0.0.0.0", 30000)
    web_args = args.parse_web_args(argv(ORIGINAL_README["web"]))
    assert web_args.controller_url == "http://localhost:30000" and web_args.model_list_mode == "reload"
    for name in ("worker", "worker 4-bit"):
        worker = args.parse_worker_args(argv(ORIGINAL_README[name]))
        assert (worker.host, worker.port) == ("0.0.0.0", 40000)
        assert worker.controller_address == "http://localhost:30000"
        assert worker.worker_address == "http://localhost:40000"
        assert worker.model_path == "mucai/llava-next-vicuna-7b-m3"
        assert worker.load_4bit is (name == "worker 4-bit")


def test_every_flag_of_the_original_serving_commands_parses() -> None:
    """The add_argument calls of the original controller.py, model_worker.py and gradio_web_server.py."""
    controller = args.parse_controller_args(["--host", "localhost", "--port", "21001", "--dispatch-method", "lottery"])
    assert controller.dispatch_method == "lottery"
    worker = args.parse_worker_args(
        "--host localhost --port 21002 --worker-address http://localhost:21002 --controller-address "
        "http://localhost:21001 --model-path m --model-base b --model-name n --device cpu --multi-modal "
        "--limit-model-concurrency 5 --stream-interval 1 --no-register --load-8bit --use-flash-attn".split()
    )
    assert (worker.worker_address, worker.controller_address) == ("http://localhost:21002", "http://localhost:21001")
    assert (worker.model_base, worker.model_name, worker.device) == ("b", "n", "cpu")
    assert worker.limit_model_concurrency == 5 and worker.no_register and worker.load_8bit and worker.use_flash_attn
    web_args = args.parse_web_args(
        "--host 0.0.0.0 --port 7861 --controller-url http://localhost:21001 --concurrency-count 4 "
        "--model-list-mode once --share --moderate --embed".split()
    )
    assert (web_args.port, web_args.concurrency_count, web_args.share, web_args.embed) == (7861, 4, True, True)
    assert web_args.moderate


@pytest.mark.parametrize(
    ("parse", "flags"),
    [
        (args.parse_web_args, ["--controller-u", "http://x"]),
        (args.parse_web_args, ["--model-list", "reload"]),
        (args.parse_controller_args, ["--dispatch", "lottery"]),
        (args.parse_worker_args, ["--model-path", "m", "--controller-addr", "http://x"]),
        (args.parse_worker_args, ["--model-path", "m", "--limit", "4"]),
        (args.parse_openai_api_args, ["--model-path", "m", "--max-image", "9"]),
    ],
)
def test_abbreviated_flags_are_refused(parse, flags: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        parse(flags)
    assert "unrecognized arguments" in capsys.readouterr().err


def test_the_worker_key_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(args.WORKER_KEY_ENV, "from-env")
    assert args.parse_controller_args([]).worker_key == "from-env"
    assert args.parse_worker_args(["--model-path", "m", "--worker-key", "flag"]).worker_key == "flag"
    monkeypatch.setenv(args.WORKER_KEY_ENV, "")
    assert args.parse_controller_args([]).worker_key is None


def page_markdown(demo: gr.Blocks) -> list[str]:
    return [block.value for block in demo.blocks.values() if isinstance(block, gr.Markdown)]


def test_embed_drops_the_title_and_moderate_is_refused() -> None:
    nowhere = f"http://127.0.0.1:{find_free_port()}"  # no controller: the demo starts with no models
    page = web.build_demo(web.parse_args(["--controller", nowhere]))
    embedded = web.build_demo(web.parse_args(["--controller", nowhere, "--embed"]))
    assert any("# M3" in text for text in page_markdown(page))
    assert not any("# M3" in text for text in page_markdown(embedded))
    with pytest.raises(SystemExit, match="--moderate"):
        web.build_demo(web.parse_args(["--controller", nowhere, "--moderate"]))
