"""The web demo: chat about an image with a model from the controller, at a visual-token budget you pick.

    python -m llava.serve.gradio_web_server --controller-url http://127.0.0.1:10000 --port 7860

The budget control offers the five trained M3 scales (1/9/36/144/576) and shows the visual tokens the
choice implies for the current image (per crop and in total for anyres checkpoints), as the model's
worker counts them. Answers stream in; regenerate, clear, temperature, top-p and max tokens are there,
and example images come from the project's `images/` folder. A worker that died shows as a message
in the chat, not as a stuck page. Works with Gradio 5 and 6.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import gradio as gr
import requests
from PIL import Image

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.conversation import Conversation, get_conv_template, process_image, select_conv_mode, template_stop

logger = logging.getLogger(__name__)

DEFAULT_EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "images"
IMAGE_PROCESS_MODES = ["Crop", "Resize", "Pad", "Default"]
CURSOR = "▌"
MAX_INPUT_CHARS = 1536
# The five budgets M3 is trained on (llava.model.matryoshka.TRAINED_SCALES, not imported: it would pull
# torch and transformers into a process that only draws the page).
BUDGETS = (1, 9, 36, 144, 576)


class ControllerClient:
    """What the demo asks of the controller and of the workers it names (blocking `requests` calls)."""

    def __init__(self, controller_url: str, timeout_s: float = 10.0, stream_timeout_s: float = 300.0) -> None:
        self.controller_url = controller_url.rstrip("/")
        self.timeout_s = timeout_s
        self.stream_timeout_s = stream_timeout_s

    def list_models(self) -> list[str]:
        try:
            requests.post(f"{self.controller_url}/refresh_all_workers", timeout=self.timeout_s)
            response = requests.post(f"{self.controller_url}/list_models", timeout=self.timeout_s)
            response.raise_for_status()
            return sorted(response.json()["models"])
        except (requests.RequestException, ValueError, KeyError) as e:
            logger.warning("cannot list models from %s: %s", self.controller_url, e)
            return []

    def worker_address(self, model: str) -> str:
        try:
            response = requests.post(
                f"{self.controller_url}/get_worker_address", json={"model": model}, timeout=self.timeout_s
            )
            response.raise_for_status()
            return response.json().get("address", "")
        except (requests.RequestException, ValueError) as e:
            logger.warning("cannot reach the controller at %s: %s", self.controller_url, e)
            return ""

    def worker_info(self, address: str) -> dict[str, Any]:
        response = requests.post(f"{address}/worker_get_status", timeout=self.timeout_s)
        response.raise_for_status()
        return response.json().get("matryoshka", {})

    def visual_tokens(self, address: str, scale: int, image_size: tuple[int, int] | None) -> dict[str, Any]:
        payload = {"matryoshka_vis_token_scale": scale, "image_size": list(image_size) if image_size else None}
        response = requests.post(f"{address}/worker_visual_tokens", json=payload, timeout=self.timeout_s)
        response.raise_for_status()
        return response.json()

    def generate_stream(self, address: str, payload: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """The worker's chunks; an HTTP error status is yielded as one chunk with its `error_code`."""
        with requests.post(
            f"{address}/worker_generate_stream",
            json=payload,
            stream=True,
            timeout=(self.timeout_s, self.stream_timeout_s),
        ) as response:
            if response.status_code != 200:
                try:
                    yield response.json()
                except ValueError:
                    yield {"text": response.text, "error_code": response.status_code}
                return
            for line in response.iter_lines(delimiter=b"\0"):
                if line:
                    yield json.loads(line)


def budget_choices(scales: Sequence[int] = BUDGETS) -> list[tuple[str, int]]:
    """Radio choices "9 (3×3)": the budget and the token grid it pools each crop to."""
    return [(f"{s} ({round(s**0.5)}×{round(s**0.5)})", s) for s in sorted(scales)]


def budget_text(scale: int, counted: dict[str, Any] | None, has_image: bool) -> str:
    """The budget line under the control, e.g. "**9 visual tokens** for this image (3×3 grid)"."""
    side = round(scale**0.5)
    if counted is None:
        return f"**{scale} visual tokens** per image ({side}×{side} grid per crop)"
    where = "for this image" if has_image else "per image"
    if counted.get("anyres"):
        return (
            f"**{counted['visual_tokens']} visual tokens** {where}: {scale} per crop ({side}×{side}), "
            "over the anyres crops plus row separators"
        )
    return f"**{counted['visual_tokens']} visual tokens** {where} ({side}×{side} grid)"


def chatbot_messages(state: Conversation | None) -> list[dict[str, str]]:
    return [] if state is None else state.to_gradio_chatbot()


class WebDemo:
    """The demo's event handlers, testable without a browser; `build()` lays them out with Gradio."""

    def __init__(
        self, client: ControllerClient, examples_dir: Path | None = DEFAULT_EXAMPLES_DIR, model_list_mode: str = "once"
    ) -> None:
        self.client = client
        self.examples_dir = examples_dir
        self.model_list_mode = model_list_mode

    # -- handlers ---------------------------------------------------------------------------

    def load_models(self) -> Any:
        models = self.client.list_models()
        return gr.update(choices=models, value=models[0] if models else None)

    def update_budget(
        self, model: str | None, scale: int, image: Image.Image | None, mode: str, state: Conversation | None = None
    ) -> str:
        if image is None and state is not None and state.get_images(return_pil=True):
            image, mode = state.get_images(return_pil=True)[0], "Default"  # the image already in the chat
        counted = None
        if model:
            address = self.client.worker_address(model)
            if address:
                size = process_image(image, mode, return_pil=True).size if image is not None else None
                try:
                    counted = self.client.visual_tokens(address, int(scale), size)
                except requests.RequestException as e:
                    logger.warning("cannot count visual tokens on %s: %s", address, e)
        return budget_text(int(scale), counted, image is not None)

    def add_text(self, state: Conversation | None, text: str, image: Image.Image | None, mode: str) -> tuple:
        """Append the user's turn (with the image on a new conversation's first turn)."""
        text = (text or "").strip()[:MAX_INPUT_CHARS]
        if not text and image is None:
            if state is not None:
                state.skip_next = True
            return state, chatbot_messages(state), "", image, ""
        if state is None or (image is not None and state.get_images(return_pil=True)):
            state = get_conv_template("llava_v1")  # replaced by the model's own template on the first round
        if image is not None:
            if DEFAULT_IMAGE_TOKEN not in text:
                text = text + "\n" + DEFAULT_IMAGE_TOKEN
            message: Any = (text, image, mode)
        else:
            message = text
        state.append_message(state.roles[0], message)
        state.append_message(state.roles[1], None)
        state.skip_next = False
        return state, chatbot_messages(state), "", None, ""

    def http_bot(
        self,
        state: Conversation | None,
        model: str | None,
        scale: int,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
    ) -> Iterator[tuple]:
        """Stream the answer to the last turn: yields (state, chatbot, status) as it grows."""
        if state is None or state.skip_next or not state.messages:
            yield state, chatbot_messages(state), ""
            return
        if not model:
            state.messages[-1][-1] = "**No model is available: start a model worker, then reload this page.**"
            yield state, chatbot_messages(state), "no model"
            return
        address = self.client.worker_address(model)
        if not address:
            state.messages[-1][-1] = (
                f"**No worker is serving {model} (it may have stopped).** "
                "Pick another model or restart the worker, then press Regenerate."
            )
            yield state, chatbot_messages(state), f"no worker for {model}"
            return
        if len(state.messages) == state.offset + 2:
            state = self._with_model_template(state, model, address)
        prompt = state.get_prompt()
        payload = {
            "model": model,
            "prompt": prompt,
            "temperature": float(temperature),
            "top_p": float(top_p),
            "max_new_tokens": int(max_new_tokens),
            "stop": template_stop(state),
            "images": state.get_images(return_pil=False),
            "matryoshka_vis_token_scale": int(scale),
        }
        state.messages[-1][-1] = CURSOR
        yield state, chatbot_messages(state), ""
        status = ""
        try:
            for data in self.client.generate_stream(address, payload):
                if data.get("error_code", 0) != 0:
                    state.messages[-1][-1] = f"**Error {data['error_code']}:** {data.get('text', '')}"
                    yield state, chatbot_messages(state), f"error {data['error_code']}"
                    return
                output = data["text"][len(prompt) :].strip()
                state.messages[-1][-1] = output if "finish_reason" in data else output + CURSOR
                if "usage" in data:
                    usage = data["usage"]
                    status = (
                        f"{usage['visual_tokens']} visual tokens at budget {usage['matryoshka_vis_token_scale']}, "
                        f"{usage['prompt_tokens']} prompt tokens, {usage['completion_tokens']} new tokens"
                    )
                yield state, chatbot_messages(state), status
        except requests.RequestException as e:
            logger.warning("worker %s failed: %s", address, e)
            state.messages[-1][-1] = (
                f"**The model worker for {model} did not answer (it may have died).** "
                "Try again in a moment: the controller drops dead workers."
            )
            yield state, chatbot_messages(state), "worker unreachable"
            return
        state.messages[-1][-1] = state.messages[-1][-1].removesuffix(CURSOR)
        yield state, chatbot_messages(state), status

    def _with_model_template(self, state: Conversation, model: str, address: str) -> Conversation:
        try:
            template = self.client.worker_info(address).get("conv_template") or select_conv_mode(model)
        except requests.RequestException:
            template = select_conv_mode(model)
        new_state = get_conv_template(template)
        new_state.append_message(new_state.roles[0], state.messages[-2][1])
        new_state.append_message(new_state.roles[1], None)
        return new_state

    def regenerate(self, state: Conversation | None) -> tuple:
        if state is None or not state.messages:
            return state, chatbot_messages(state), ""
        state.messages[-1][-1] = None
        state.skip_next = False
        return state, chatbot_messages(state), ""

    def clear(self) -> tuple:
        return None, [], "", None, ""

    # -- layout -----------------------------------------------------------------------------

    def examples(self) -> list[list[str]]:
        if self.examples_dir is None or not self.examples_dir.is_dir():
            return []
        paths = sorted(p for p in self.examples_dir.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        return [[str(p), "What is in the image?"] for p in paths]

    def build(self) -> gr.Blocks:
        models = self.client.list_models()
        chatbot_kwargs = {"type": "messages"} if "type" in inspect.signature(gr.Chatbot.__init__).parameters else {}
        with gr.Blocks(title="M3: Matryoshka Multimodal Models", analytics_enabled=False) as demo:
            state = gr.State(None)
            gr.Markdown(
                "# M3: Matryoshka Multimodal Models\nChat about an image with a visual-token budget of your choice."
            )
            with gr.Row():
                with gr.Column(scale=3):
                    model_selector = gr.Dropdown(
                        choices=models,
                        value=models[0] if models else None,
                        label="Model",
                        interactive=True,
                        elem_id="model_selector",
                    )
                    imagebox = gr.Image(type="pil", label="Image", elem_id="imagebox")
                    mode = gr.Radio(
                        IMAGE_PROCESS_MODES, value="Default", label="Preprocess for non-square image", visible=False
                    )
                    budget = gr.Radio(
                        budget_choices(),
                        value=576,
                        label="Visual-token budget (matryoshka_vis_token_scale)",
                        elem_id="budget",
                    )
                    budget_info = gr.Markdown(budget_text(576, None, False), elem_id="budget_info")
                    with gr.Accordion("Parameters", open=False):
                        temperature = gr.Slider(
                            0.0, 1.0, value=0.2, step=0.1, label="Temperature", elem_id="temperature"
                        )
                        top_p = gr.Slider(0.0, 1.0, value=0.7, step=0.1, label="Top P", elem_id="top_p")
                        max_tokens = gr.Slider(
                            1, 1024, value=512, step=1, label="Max output tokens", elem_id="max_tokens"
                        )
                with gr.Column(scale=8):
                    chatbot = gr.Chatbot(elem_id="chatbot", label="M3 chat", height=520, **chatbot_kwargs)
                    with gr.Row():
                        textbox = gr.Textbox(
                            show_label=False,
                            placeholder="Ask about the image and press ENTER",
                            elem_id="question",
                            scale=8,
                        )
                        send = gr.Button("Send", variant="primary", elem_id="send", scale=1)
                    with gr.Row():
                        regenerate = gr.Button("Regenerate", elem_id="regenerate")
                        clear = gr.Button("Clear", elem_id="clear")
                    status = gr.Markdown("", elem_id="status")
            examples = self.examples()
            if examples:
                gr.Examples(examples=examples, inputs=[imagebox, textbox], cache_examples=False)

            bot_inputs = [state, model_selector, budget, temperature, top_p, max_tokens]
            bot_outputs = [state, chatbot, status]
            add_outputs = [state, chatbot, textbox, imagebox, status]
            for trigger in (textbox.submit, send.click):
                trigger(self.add_text, [state, textbox, imagebox, mode], add_outputs, queue=False).then(
                    self.http_bot, bot_inputs, bot_outputs
                )
            regenerate.click(self.regenerate, [state], [state, chatbot, status], queue=False).then(
                self.http_bot, bot_inputs, bot_outputs
            )
            clear.click(self.clear, None, [state, chatbot, textbox, imagebox, status], queue=False)
            for trigger in (budget.change, imagebox.upload, model_selector.change):
                trigger(self.update_budget, [model_selector, budget, imagebox, mode, state], [budget_info], queue=False)
            if self.model_list_mode == "reload":
                demo.load(self.load_models, None, [model_selector], queue=False)
        return demo


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="LLaVA/M3 web demo", prog="python -m llava.serve.gradio_web_server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--controller-url", default="http://127.0.0.1:10000")
    parser.add_argument("--concurrency-count", type=int, default=16)
    parser.add_argument(
        "--model-list-mode",
        choices=["once", "reload"],
        default="once",
        help="read the model list once at startup, or on every page load",
    )
    parser.add_argument("--examples-dir", type=Path, default=DEFAULT_EXAMPLES_DIR)
    parser.add_argument("--share", action="store_true")
    return parser.parse_args(argv)


def build_demo(args: argparse.Namespace) -> gr.Blocks:
    demo = WebDemo(ControllerClient(args.controller_url), args.examples_dir, args.model_list_mode).build()
    return demo.queue(default_concurrency_limit=args.concurrency_count, api_open=False)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    build_demo(args).launch(server_name=args.host, server_port=args.port, share=args.share, ssr_mode=False)


if __name__ == "__main__":
    main()
