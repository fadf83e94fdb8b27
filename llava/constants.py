"""Token ids and strings shared by every part of LLaVA/M3 (names kept from the original LLaVA)."""

CONTROLLER_HEART_BEAT_EXPIRATION = 30
WORKER_HEART_BEAT_INTERVAL = 15
# Serving defaults: most images in one request, and the cap on the tokens one request may generate.
DEFAULT_MAX_IMAGES = 8
DEFAULT_MAX_NEW_TOKENS_LIMIT = 1024

LOGDIR = "."

# Label value ignored by the loss (PyTorch's cross-entropy default).
IGNORE_INDEX = -100
# Placeholder id spliced into the token ids where an image's visual tokens go.
IMAGE_TOKEN_INDEX = -200
DEFAULT_IMAGE_TOKEN = "<image>"
DEFAULT_IMAGE_PATCH_TOKEN = "<im_patch>"
DEFAULT_IM_START_TOKEN = "<im_start>"
DEFAULT_IM_END_TOKEN = "<im_end>"
IMAGE_PLACEHOLDER = "<image-placeholder>"

MIN_SAMPLING_VALUE = 1e-5
"""Smaller positive temperatures and top-p values vanish in float32 sampling (a division by zero, or an
empty nucleus): they are read as greedy decoding and as top-1 sampling, as vLLM reads them."""
