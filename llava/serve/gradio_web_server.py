"""The web demo: chat about an image with a model from the controller, at a visual-token budget you pick.

    python -m llava.serve.gradio_web_server --controller-url http://127.0.0.1:10000 --port 7860

The budget control offers the five trained M3 scales (1/9/36/144/576) and shows the visual tokens the
choice implies for the current image (per crop and in total for anyres checkpoints), as the model's
worker counts them; "auto" lets the worker's calibrated policy pick the budget per answer, and the
status line under the answer says which budget answered and how many visual tokens it read. The
"Compare budgets" tab answers one question about one image at all five budgets side by side, from one
pass of the vision tower (the worker's `/worker_compare_budgets`), each with its time and the picture of
what the model sees at that budget. Answers stream in; regenerate, clear, temperature, top-p and max tokens are there,
and example images come from the project's `images/` folder. A controller or worker that is down,
refuses a request or answers nonsense shows as a message in the chat, never as a traceback or a
stuck page. Works with Gradio 5 and 6.
"""

from __future__ import annotations

import argparse
import base64
import inspect
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import gradio as gr
import requests
from PIL import Image

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.conversation import Conversation, get_conv_template, process_image, select_conv_mode, template_stop
from llava.scale_policy import AUTO
from llava.serve.args import DEFAULT_EXAMPLES_DIR
from llava.serve.args import parse_web_args as parse_args

logger = logging.getLogger(__name__)

IMAGE_PROCESS_MODES = ["Crop", "Resize", "Pad", "Default"]
CURSOR = "▌"
MAX_INPUT_CHARS = 1536
# The five budgets M3 is trained on (llava.model.matryoshka.TRAINED_SCALES, not imported: it would pull
# torch and transformers into a process that only draws the page).
BUDGETS = (1, 9, 36, 144, 576)
AUTO_BUDGET = str(AUTO)
PICTURE_WIDTH = 336
"""Narrower pictures of what a budget sees are enlarged to at least this width (the usual tower input side)."""


class ControllerClient:
    """What the demo asks of the controller and of the workers it names (blocking `requests` calls).

    No call raises for a server that is down or answers nonsense: the demo shows a message instead.
    """

    def __init__(self, controller_url: str, timeout_s: float = 10.0, stream_timeout_s: float = 300.0) -> None:
        self.controller_url = controller_url.rstrip("/")
        self.timeout_s = timeout_s
        self.stream_timeout_s = stream_timeout_s

    def _post(self, url: str, payload: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The JSON object a POST answers with, or None (logged) for an error or anything else."""
        try:
            response = requests.post(url, json=payload, timeout=self.timeout_s)
            response.raise_for_status()
            data = response.json()
        except (requests.RequestException, ValueError) as e:
            logger.warning("request to %s failed: %s", url, e)
            return None
        if not isinstance(data, dict):
            logger.warning("%s answered %s, not a JSON object", url, type(data).__name__)
            return None
        return data

    def list_models(self) -> list[str]:
        self._post(f"{self.controller_url}/refresh_all_workers")
        models = (self._post(f"{self.controller_url}/list_models") or {}).get("models")
        return sorted(m for m in models if isinstance(m, str)) if isinstance(models, list) else []

    def worker_address(self, model: str) -> str:
        address = (self._post(f"{self.controller_url}/get_worker_address", {"model": model}) or {}).get("address")
        return address if isinstance(address, str) else ""

    def worker_info(self, address: str) -> dict[str, Any]:
        info = (self._post(f"{address}/worker_get_status") or {}).get("matryoshka")
        return info if isinstance(info, dict) else {}

    def visual_tokens(self, address: str, scale: int, image_size: tuple[int, int] | None) -> dict[str, Any] | None:
        payload = {"matryoshka_vis_token_scale": scale, "image_size": list(image_size) if image_size else None}
        counted = self._post(f"{address}/worker_visual_tokens", payload)
        return counted if counted is not None and isinstance(counted.get("visual_tokens"), int) else None

    def compare_budgets(self, address: str, payload: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
        """The worker's `/worker_compare_budgets` answer, or None and a message saying why there is none."""
        try:
            response = requests.post(
                f"{address}/worker_compare_budgets", json=payload, timeout=(self.timeout_s, self.stream_timeout_s)
            )
        except requests.RequestException as e:
            logger.warning("worker %s failed: %s", address, e)
            return None, "the model worker did not answer (it may have died); try again in a moment"
        if response.status_code != 200:
            refusal = _error_chunk(response.content, response.status_code)
            return None, f"Error {refusal['error_code']}: {refusal['text']}"
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("answers"), list):
            return None, "Error 502: the worker sent a comparison the demo cannot read"
        return data, ""

    def generate_stream(self, address: str, payload: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """The worker's chunks; an HTTP error status or an unreadable chunk is yielded as one error chunk.

        Raises `requests.RequestException` when the worker cannot be reached or the connection breaks.
        """
        with requests.post(
            f"{address}/worker_generate_stream",
            json=payload,
            stream=True,
            timeout=(self.timeout_s, self.stream_timeout_s),
        ) as response:
            if response.status_code != 200:
                yield _error_chunk(response.content, response.status_code)
                return
            for line in response.iter_lines(delimiter=b"\0"):
                if line:
                    yield _parse_chunk(line)


def _parse_chunk(line: bytes) -> dict[str, Any]:
    try:
        data = json.loads(line)
    except ValueError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("text"), str):
        return {"text": "the worker sent a chunk the demo cannot read", "error_code": 502}
    return data


def _error_chunk(body: bytes, status: int) -> dict[str, Any]:
    """A refused request's JSON error as a chunk (or its text, when a proxy answered with a page)."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("text"), str):
        return {"text": data["text"], "error_code": data.get("error_code", status)}
    return {"text": body.decode(errors="replace")[:500], "error_code": status}


def budget_choices(scales: Sequence[int] = BUDGETS) -> list[tuple[str, int | str]]:
    """Radio choices "9 (3×3)": the budget and the token grid it pools each crop to; then "auto"."""
    return [*((f"{s} ({round(s**0.5)}×{round(s**0.5)})", s) for s in sorted(scales)), (AUTO_BUDGET, AUTO_BUDGET)]


def request_budget(choice: int | str) -> int | str:
    """The radio's value as the worker takes it: an int, or "auto"."""
    return AUTO_BUDGET if choice == AUTO_BUDGET else int(choice)


def auto_text(policy: Any) -> str:
    """The budget line for "auto", from the `auto` block of the worker's status (None: the worker cannot)."""
    if policy is None:
        return "**auto is not available on this model's worker** (its engine serves fixed budgets): pick a budget"
    text = "**auto**: the model answers with the smallest budget it is sure of"
    if isinstance(policy, dict) and isinstance(policy.get("describe"), str):
        calibrated = "calibrated" if policy.get("calibrated") else "uncalibrated"
        text += f", trying {policy['describe']} ({calibrated} thresholds of the first answer token's probability)"
    return text


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


def _no_worker(model: str | None) -> tuple[str, str]:
    """The chat message and status line when no worker can answer."""
    if not model:
        return "**No model is available: start a model worker, then reload this page.**", "no model"
    return (
        f"**No worker is serving {model} (it may have stopped).** "
        "Pick another model or restart the worker, then press Regenerate.",
        f"no worker for {model}",
    )


def _usage_text(usage: Any) -> str:
    """The status line of a finished answer, from the worker's `usage` ("" when it sent none): the budget that
    answered and its visual tokens, and for "auto" what the budgets tried before it read too."""
    if not isinstance(usage, dict):
        return ""
    try:
        used = f"{usage['visual_tokens']} visual tokens at budget {usage['matryoshka_vis_token_scale_used']}"
        if usage["matryoshka_vis_token_scale"] == AUTO_BUDGET:
            used += f" (chosen by auto; {usage['visual_tokens_processed']} read over the budgets tried)"
        return f"{used}, {usage['prompt_tokens']} prompt tokens, {usage['completion_tokens']} new tokens"
    except KeyError:
        return ""


def _picture(url: Any) -> Image.Image | None:
    """A PNG data URL of the worker's as a PIL image at least `PICTURE_WIDTH` wide (None for anything else).

    Small towers' pictures are enlarged with nearest-neighbour sampling, which keeps each block one colour."""
    if not isinstance(url, str) or not url.startswith("data:image/png;base64,"):
        return None
    try:
        picture = Image.open(BytesIO(base64.b64decode(url.split(",", 1)[1], validate=True))).convert("RGB")
    except (ValueError, OSError):  # bad base64 (binascii.Error is a ValueError), not an image
        return None
    if picture.width >= PICTURE_WIDTH:
        return picture
    factor = -(-PICTURE_WIDTH // picture.width)
    return picture.resize((picture.width * factor, picture.height * factor), Image.Resampling.NEAREST)


def compared_answer_text(answer: Any) -> str:
    """One budget's cell of the comparison: budget, visual tokens, time, p_first, then the answer."""
    try:
        head = (
            f"**{answer['matryoshka_vis_token_scale']} visual tokens per image** ({answer['visual_tokens']} in all) · "
            f"{1000 * answer['seconds']:.0f} ms · first-token probability {answer['p_first']:.2f}"
        )
        return f"{head}\n\n{answer['text'] or '*(an empty answer)*'}"
    except (KeyError, TypeError, ValueError):
        return "*the worker sent nothing the demo can read for this budget*"


def chatbot_messages(state: Conversation | None) -> list[dict[str, str]]:
    return [] if state is None else state.to_gradio_chatbot()


class WebDemo:
    """The demo's event handlers, testable without a browser; `build()` lays them out with Gradio."""

    def __init__(
        self,
        client: ControllerClient,
        examples_dir: Path | None = DEFAULT_EXAMPLES_DIR,
        model_list_mode: str = "once",
        embed: bool = False,
    ) -> None:
        self.client = client
        self.examples_dir = examples_dir
        self.model_list_mode = model_list_mode
        self.embed = embed

    # -- handlers ---------------------------------------------------------------------------

    def load_models(self) -> Any:
        models = self.client.list_models()
        return gr.update(choices=models, value=models[0] if models else None)

    def update_budget(
        self,
        model: str | None,
        scale: int | str,
        image: Image.Image | None,
        mode: str,
        state: Conversation | None = None,
    ) -> str:
        if image is None and state is not None and state.get_images(return_pil=True):
            image, mode = state.get_images(return_pil=True)[0], "Default"  # the image already in the chat
        counted = None
        address = self.client.worker_address(model) if model else ""
        if scale == AUTO_BUDGET:
            return auto_text(self.client.worker_info(address).get(AUTO_BUDGET, {}) if address else {})
        if address:
            size = process_image(image, mode, return_pil=True).size if image is not None else None
            counted = self.client.visual_tokens(address, int(scale), size)
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
        scale: int | str,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
    ) -> Iterator[tuple]:
        """Stream the answer to the last turn: yields (state, chatbot, status) as it grows."""
        if state is None or state.skip_next or not state.messages:
            yield state, chatbot_messages(state), ""
            return
        address = self.client.worker_address(model) if model else ""
        if not address:
            state.messages[-1][-1], status = _no_worker(model)
            yield state, chatbot_messages(state), status
            return
        if len(state.messages) == state.offset + 2:
            state = self._with_model_template(state, model, address)
        payload = {
            "model": model,
            "prompt": state.get_prompt(),
            "temperature": float(temperature),
            "top_p": float(top_p),
            "max_new_tokens": int(max_new_tokens),
            "stop": template_stop(state),
            "images": state.get_images(return_pil=False),
            "matryoshka_vis_token_scale": request_budget(scale),
        }
        state.messages[-1][-1] = CURSOR
        yield state, chatbot_messages(state), ""
        yield from self._stream_answer(state, model, address, payload)

    def _stream_answer(self, state: Conversation, model: str, address: str, payload: dict[str, Any]) -> Iterator[tuple]:
        """The answer growing in the last turn; an error or a dead worker ends it with a message."""
        prompt, status = payload["prompt"], ""
        try:
            for data in self.client.generate_stream(address, payload):
                if data.get("error_code", 0) != 0:
                    state.messages[-1][-1] = f"**Error {data['error_code']}:** {data.get('text', '')}"
                    yield state, chatbot_messages(state), f"error {data['error_code']}"
                    return
                output = data["text"][len(prompt) :].strip()
                state.messages[-1][-1] = output if "finish_reason" in data else output + CURSOR
                status = _usage_text(data.get("usage")) or status
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
        new_state = self._model_template(model, address)
        new_state.append_message(new_state.roles[0], state.messages[-2][1])
        new_state.append_message(new_state.roles[1], None)
        return new_state

    def _model_template(self, model: str, address: str) -> Conversation:
        """An empty conversation in the template the model's worker reports (else the one its name suggests)."""
        stored = self.client.worker_info(address).get("conv_template")
        try:
            return get_conv_template(stored if isinstance(stored, str) else select_conv_mode(model))
        except ValueError:  # a template this demo does not know: the name decides
            return get_conv_template(select_conv_mode(model))

    def compare(self, model: str | None, image: Image.Image | None, question: str, max_new_tokens: int) -> tuple:
        """The compare view: (status, one picture per budget, one answer per budget), greedy so that the
        answers differ only by the budget."""
        nothing = (*[None] * len(BUDGETS), *[""] * len(BUDGETS))
        if image is None:
            return ("**Upload an image to compare the budgets.**", *nothing)
        address = self.client.worker_address(model) if model else ""
        if not address:
            return (_no_worker(model)[0], *nothing)
        conv = self._model_template(model, address)
        question = (question or "").strip()[:MAX_INPUT_CHARS] or "What is in the image?"
        conv.append_message(conv.roles[0], (f"{question}\n{DEFAULT_IMAGE_TOKEN}", image, "Default"))
        conv.append_message(conv.roles[1], None)
        payload = {
            "model": model,
            "prompt": conv.get_prompt(),
            "images": conv.get_images(return_pil=False),
            "temperature": 0.0,
            "max_new_tokens": int(max_new_tokens),
            "stop": template_stop(conv),
            "matryoshka_vis_token_scales": list(BUDGETS),
        }
        data, error = self.client.compare_budgets(address, payload)
        if data is None:
            return (f"**{error}**", *nothing)
        answers = {a.get("matryoshka_vis_token_scale"): a for a in data["answers"] if isinstance(a, dict)}
        pictures = [_picture((answers.get(scale, {}).get("pictures") or [None])[0]) for scale in BUDGETS]
        texts = [compared_answer_text(answers.get(scale)) for scale in BUDGETS]
        encode = data.get("encode_seconds")
        tower = f" ({1000 * encode:.0f} ms)" if isinstance(encode, (int, float)) else ""
        status = f"Every budget from one pass of the vision tower{tower}; under each picture, that budget's own time."
        return (status, *pictures, *texts)

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
        with gr.Blocks(title="M3: Matryoshka Multimodal Models", analytics_enabled=False) as demo:
            state = gr.State(None)
            if not self.embed:
                gr.Markdown(
                    "# M3: Matryoshka Multimodal Models\nChat about an image with a visual-token budget of your choice."
                )
            model = gr.Dropdown(
                choices=models,
                value=models[0] if models else None,
                label="Model",
                interactive=True,
                elem_id="model_selector",
            )
            with gr.Tab("Chat", elem_id="chat_tab"):
                with gr.Row():
                    with gr.Column(scale=3):
                        controls = _controls(model)
                    with gr.Column(scale=8):
                        chat = _chat()
                examples = self.examples()
                if examples:
                    gr.Examples(examples=examples, inputs=[controls.image, chat.textbox], cache_examples=False)
            with gr.Tab("Compare budgets", elem_id="compare_tab"):
                compare = _compare_view()
            self._wire(demo, state, controls, chat)
            compare_outputs = [compare.status, *compare.pictures, *compare.answers]
            compare_inputs = [model, compare.image, compare.question, compare.max_tokens]
            for trigger in (compare.run.click, compare.question.submit):
                trigger(self.compare, compare_inputs, compare_outputs)
        return demo

    def _wire(self, demo: gr.Blocks, state: gr.State, controls: _Controls, chat: _Chat) -> None:
        """Connect the page's events to the handlers."""
        bot_inputs = [state, controls.model, controls.budget, controls.temperature, controls.top_p, controls.max_tokens]
        bot_outputs = [state, chat.chatbot, chat.status]
        add_inputs = [state, chat.textbox, controls.image, controls.mode]
        add_outputs = [state, chat.chatbot, chat.textbox, controls.image, chat.status]
        for trigger in (chat.textbox.submit, chat.send.click):
            trigger(self.add_text, add_inputs, add_outputs, queue=False).then(self.http_bot, bot_inputs, bot_outputs)
        chat.regenerate.click(self.regenerate, [state], bot_outputs, queue=False).then(
            self.http_bot, bot_inputs, bot_outputs
        )
        chat.clear.click(self.clear, None, add_outputs, queue=False)
        budget_inputs = [controls.model, controls.budget, controls.image, controls.mode, state]
        for trigger in (controls.budget.change, controls.image.upload, controls.model.change):
            trigger(self.update_budget, budget_inputs, [controls.budget_info], queue=False)
        if self.model_list_mode == "reload":
            demo.load(self.load_models, None, [controls.model], queue=False)


@dataclass
class _Controls:
    model: gr.Dropdown
    image: gr.Image
    mode: gr.Radio
    budget: gr.Radio
    budget_info: gr.Markdown
    temperature: gr.Slider
    top_p: gr.Slider
    max_tokens: gr.Slider


@dataclass
class _Chat:
    chatbot: gr.Chatbot
    textbox: gr.Textbox
    send: gr.Button
    regenerate: gr.Button
    clear: gr.Button
    status: gr.Markdown


def _controls(model: gr.Dropdown) -> _Controls:
    """The chat's left column: image, budget and sampling parameters (for the model chosen above the tabs)."""
    image = gr.Image(type="pil", label="Image", elem_id="imagebox")
    mode = gr.Radio(IMAGE_PROCESS_MODES, value="Default", label="Preprocess for non-square image", visible=False)
    budget = gr.Radio(
        budget_choices(), value=576, label="Visual-token budget (matryoshka_vis_token_scale)", elem_id="budget"
    )
    budget_info = gr.Markdown(budget_text(576, None, False), elem_id="budget_info")
    with gr.Accordion("Parameters", open=False):
        temperature = gr.Slider(0.0, 1.0, value=0.2, step=0.1, label="Temperature", elem_id="temperature")
        top_p = gr.Slider(0.0, 1.0, value=0.7, step=0.1, label="Top P", elem_id="top_p")
        max_tokens = gr.Slider(1, 1024, value=512, step=1, label="Max output tokens", elem_id="max_tokens")
    return _Controls(model, image, mode, budget, budget_info, temperature, top_p, max_tokens)


def _chat() -> _Chat:
    """The right column: the conversation, the question box and its buttons, the status line."""
    chatbot_kwargs = {"type": "messages"} if "type" in inspect.signature(gr.Chatbot.__init__).parameters else {}
    chatbot = gr.Chatbot(elem_id="chatbot", label="M3 chat", height=520, **chatbot_kwargs)
    with gr.Row():
        textbox = gr.Textbox(
            show_label=False, placeholder="Ask about the image and press ENTER", elem_id="question", scale=8
        )
        send = gr.Button("Send", variant="primary", elem_id="send", scale=1)
    with gr.Row():
        regenerate = gr.Button("Regenerate", elem_id="regenerate")
        clear = gr.Button("Clear", elem_id="clear")
    status = gr.Markdown("", elem_id="status")
    return _Chat(chatbot, textbox, send, regenerate, clear, status)


@dataclass
class _Compare:
    image: gr.Image
    question: gr.Textbox
    max_tokens: gr.Slider
    run: gr.Button
    status: gr.Markdown
    pictures: list[gr.Image]
    answers: list[gr.Markdown]


def _compare_view() -> _Compare:
    """The compare tab: an image and a question on the left; per budget, what the model sees and its answer."""
    with gr.Row():
        with gr.Column(scale=3):
            image = gr.Image(type="pil", label="Image", elem_id="compare_image")
            question = gr.Textbox(
                label="Question",
                placeholder="Ask about the image",
                value="What is in the image?",
                elem_id="compare_question",
            )
            max_tokens = gr.Slider(1, 256, value=32, step=1, label="Max output tokens", elem_id="compare_max_tokens")
            run = gr.Button("Answer at every budget", variant="primary", elem_id="compare_run")
        with gr.Column(scale=10):
            status = gr.Markdown("", elem_id="compare_status")
            pictures, answers = [], []
            with gr.Row():
                for scale in BUDGETS:
                    with gr.Column(min_width=120):
                        pictures.append(
                            gr.Image(
                                label=f"{scale} tokens",
                                interactive=False,
                                height=220,
                                elem_id=f"compare_picture_{scale}",
                                elem_classes=["compare_picture"],
                            )
                        )
                        answers.append(
                            gr.Markdown("", elem_id=f"compare_answer_{scale}", elem_classes=["compare_answer"])
                        )
    return _Compare(image, question, max_tokens, run, status, pictures, answers)


def build_demo(args: argparse.Namespace) -> gr.Blocks:
    """The demo the flags describe, with its queue."""
    if args.moderate:
        raise SystemExit(
            "--moderate (LLaVA's moderation of prompts through OpenAI's moderation API) is not available in this "
            "demo; start it without --moderate"
        )
    client = ControllerClient(args.controller_url)
    demo = WebDemo(client, args.examples_dir, args.model_list_mode, embed=args.embed).build()
    return demo.queue(default_concurrency_limit=args.concurrency_count, api_open=False)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    build_demo(args).launch(server_name=args.host, server_port=args.port, share=args.share, ssr_mode=False)


if __name__ == "__main__":
    main()
