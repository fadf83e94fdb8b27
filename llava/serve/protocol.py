"""The JSON bodies of the LLaVA worker protocol, one pydantic model per route, shared by the controller and the
worker (and so torch-free). Field names are those of the original LLaVA controller and worker.

Every number has a range and every string must be valid Unicode, so nothing a client sends can reach
the model code as a type it does not expect; FastAPI publishes these models in each app's OpenAPI
schema (`/openapi.json`), which is what the fuzz tests generate requests from.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import httpx
from pydantic import AfterValidator, Field, ValidationError, ValidatorFunctionWrapHandler, WrapValidator
from pydantic_core import PydanticCustomError

from llava.constants import MIN_SAMPLING_VALUE
from llava.scale_policy import AUTO, AutoScale
from llava.serve.http import RequestModel, Text

MAX_SCALE = 1 << 16
"""Largest `matryoshka_vis_token_scale` a request may name (a 256×256 grid); each model lists its valid ones."""
MAX_TOKENS = 1 << 20
"""Largest token count a request may ask for; each server cuts it to its own limit and context."""
MAX_COMPARED_SCALES = 8
"""Most budgets one `/worker_compare_budgets` request may name: every valid one of a 24×24 grid."""
MAX_QUEUE_LENGTH = 1 << 20
MAX_IMAGE_SIDE = 1 << 20


def _describe(value: Any) -> str:
    """A short account of a refused value (a huge number or text is not echoed back whole)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**20:
        return "an integer of more than 20 digits"
    text = repr(value)
    return (
        f"{type(value).__name__} {text}" if len(text) <= 40 else f"a {type(value).__name__} of {len(text)} characters"
    )


def _refused_budget(kind: str, value: Any, handler: ValidatorFunctionWrapHandler, extra: str) -> Any:
    try:
        return handler(value)
    except ValidationError:
        raise PydanticCustomError(
            kind,
            "must be one integer visual-token budget from 1 to {limit}, such as 1, 9, 36, 144 or 576"
            + extra
            + "; got {got}",
            {"limit": MAX_SCALE, "got": _describe(value)},
        ) from None


def _scale(value: Any, handler: ValidatorFunctionWrapHandler) -> int:
    return _refused_budget("scale", value, handler, "")


def _budget(value: Any, handler: ValidatorFunctionWrapHandler) -> int | str:
    return _refused_budget("budget", value, handler, ', or "auto" (the checkpoint\'s calibrated policy)')


Scale = Annotated[int, Field(ge=1, le=MAX_SCALE), WrapValidator(_scale)]
"""`matryoshka_vis_token_scale` where only a fixed budget makes sense (what an image costs): one integer."""

Budget = Annotated[Annotated[int, Field(ge=1, le=MAX_SCALE)] | Literal["auto"], WrapValidator(_budget)]
"""`matryoshka_vis_token_scale` of a generation request: one integer, or exactly "auto" (None, i.e. absent,
means the server's default). The request keeps the text so that the controller forwards it as sent;
`request_budget` turns it into `AUTO` for the serving code."""


def request_budget(value: int | str | None) -> int | AutoScale | None:
    """A validated `Budget` as the serving code takes it: "auto" becomes `AUTO`."""
    return AUTO if value == str(AUTO) else value


ModelName = Annotated[Text, Field(min_length=1, max_length=256)]


def _greedy_below_minimum(temperature: float) -> float:
    return 0.0 if temperature < MIN_SAMPLING_VALUE else temperature


def _top1_below_minimum(top_p: float) -> float:
    return max(top_p, MIN_SAMPLING_VALUE)


Temperature = Annotated[float, Field(ge=0.0, le=2.0), AfterValidator(_greedy_below_minimum)]
"""0 means greedy decoding (so does anything below `MIN_SAMPLING_VALUE`)."""
TopP = Annotated[float, Field(gt=0.0, le=1.0), AfterValidator(_top1_below_minimum)]


def _http_url(value: str) -> str:
    try:
        url = httpx.URL(value)
    except (httpx.InvalidURL, UnicodeError, ValueError) as e:
        raise ValueError(f"not a URL: {e}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError("must be an http(s) URL with a host, such as http://127.0.0.1:40000")
    return value.rstrip("/")


WorkerAddress = Annotated[
    Text, Field(min_length=1, max_length=2048, pattern=r"^https?://[^/?#\s]+(/\S*)?$"), AfterValidator(_http_url)
]
"""The URL the controller reaches a worker at; it is also the worker's name."""


class PromptParams(RequestModel):
    """What the worker's generation routes share: a prompt in the model's template, its images, sampling."""

    model: ModelName | None = None
    prompt: Text
    images: list[Text] | None = None
    """Base64 images (or data: URLs), one per `<image>` in the prompt."""
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    max_new_tokens: int = Field(256, ge=1, le=MAX_TOKENS)
    stop: Text | list[Text] | None = None

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class WorkerGenerateParams(PromptParams):
    """The body of a worker's `/worker_generate_stream`."""

    matryoshka_vis_token_scale: Budget | None = None


class CompareBudgetsParams(PromptParams):
    """The body of a worker's `/worker_compare_budgets`: one prompt answered at several budgets."""

    matryoshka_vis_token_scales: list[Scale] | None = Field(None, min_length=1, max_length=MAX_COMPARED_SCALES)
    """The budgets to answer at (each once, in increasing order); None: those the checkpoint was trained on."""


class ControllerGenerateParams(WorkerGenerateParams):
    """The body of the controller's `/worker_generate_stream`: as a worker's, and `model` picks the worker."""

    model: ModelName


class VisualTokensParams(RequestModel):
    """The body of a worker's `/worker_visual_tokens`: what an image costs at a budget."""

    matryoshka_vis_token_scale: Scale | None = None
    image_size: (
        Annotated[list[Annotated[int, Field(ge=1, le=MAX_IMAGE_SIDE)]], Field(min_length=2, max_length=2)] | None
    ) = None
    """[width, height] of the image (anyres checkpoints count crops by it); None: a square image."""


class WorkerStatus(RequestModel):
    """What a worker reports about itself (`/worker_get_status`); fields beyond these are ignored."""

    model_names: list[ModelName] = Field(min_length=1, max_length=64)
    speed: float = Field(1.0, gt=0.0, le=1e6)
    queue_length: int = Field(0, ge=0, le=MAX_QUEUE_LENGTH)


class RegisterWorkerParams(RequestModel):
    """The body of the controller's `/register_worker` (needs the worker key, see the controller)."""

    worker_name: WorkerAddress
    check_heart_beat: bool = True
    """Kept for LLaVA's workers, which send it; every worker must beat to stay registered, whatever it says."""
    worker_status: WorkerStatus | None = None
    """None: the controller asks the worker for it."""


class HeartbeatParams(RequestModel):
    """The body of the controller's `/receive_heart_beat` (needs the worker key)."""

    worker_name: WorkerAddress
    queue_length: int = Field(0, ge=0, le=MAX_QUEUE_LENGTH)


class ModelQuery(RequestModel):
    """The body of the controller's `/get_worker_address`."""

    model: ModelName
