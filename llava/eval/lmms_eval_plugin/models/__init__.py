"""What lmms-eval's `LMMS_EVAL_PLUGINS=llava.eval.lmms_eval_plugin` reads: model name → class in `models/<name>.py`."""

AVAILABLE_MODELS = {"llava_m3": "LlavaM3"}
