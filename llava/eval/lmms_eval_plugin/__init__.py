"""lmms-eval plugin: the `llava_m3` model, so lmms-eval evaluates M3 checkpoints at a chosen visual-token budget.

    lmms-eval --model llava_m3 --model_args pretrained=mucai/llava-next-vicuna-7b-m3,matryoshka_vis_token_scale=36 \\
        --tasks mme,mmbench_en_dev --batch_size 1

lmms-eval finds the model in either of its plugin mechanisms, without any change to lmms-eval:

- the entry-point group `lmms_eval.models` (lmms-eval 0.4+; declared in this package's
  pyproject, so `pip install -e .` is enough): the entry point is `manifest` below;
- the older `LMMS_EVAL_PLUGINS=llava.eval.lmms_eval_plugin` environment variable, which imports
  `llava.eval.lmms_eval_plugin.models` and reads its `AVAILABLE_MODELS`, and needs a `tasks` folder
  beside it.

`tasks/` holds the plugin's own lmms-eval tasks (M3-Shapes, see `shapes_task`), found with
`--include_path llava/eval/lmms_eval_plugin/tasks`. Nothing here imports lmms-eval until the model
class is loaded, so `llava` does not depend on it.
"""

from __future__ import annotations

from typing import Any

MODEL_ID = "llava_m3"
CLASS_PATH = "llava.eval.lmms_eval_plugin.models.llava_m3.LlavaM3"


def manifest() -> Any:
    """The `lmms_eval.models` entry point: lmms-eval's `ModelManifest` for `llava_m3`."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH)
