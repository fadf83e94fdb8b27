"""M3 as a vLLM model: `vllm serve <M3 checkpoint>` takes the visual-token budget per request.

vLLM finds `register` through the `vllm.general_plugins` entry point (pyproject.toml) and calls it in
every process it starts, before any model is resolved. It tells vLLM which class serves the
architectures named in M3 checkpoints (`LlavaLlamaForCausalLM`, ...) and where to find a chat template
for them; the model and processor modules are imported only when vLLM builds the model, so a vLLM
process serving another model pays nothing for the plugin.

The budget is a multimodal processor argument: `mm_processor_kwargs={"matryoshka_vis_token_scale": 9}`
per request (`LLM.generate`, or `extra_body` of the OpenAI API), `--mm-processor-kwargs` for a server-wide
default, else the checkpoint's own default.
"""

from __future__ import annotations

# Architecture named in the checkpoint's config.json → the vLLM text model that runs its language model.
TEXT_ARCHITECTURES: dict[str, str] = {
    "LlavaLlamaForCausalLM": "LlamaForCausalLM",
    "LlavaMistralForCausalLM": "MistralForCausalLM",
    "LlavaQwen2ForCausalLM": "Qwen2ForCausalLM",
}
MODEL_TYPES = ("llava_llama", "llava_mistral", "llava_qwen2")
MODEL_CLASS = "llava.vllm_plugin.model:M3LlavaForCausalLM"


def register() -> None:
    """Register the M3 model class and chat templates with vLLM (idempotent)."""
    from vllm import ModelRegistry
    from vllm.transformers_utils.chat_templates.registry import register_chat_template_fallback_path

    # Importing llava.model registers the llava_* configs with transformers' AutoConfig, which vLLM
    # uses to read config.json.
    import llava.model  # noqa: F401
    from llava.vllm_plugin.chat_template import chat_template_path

    for architecture in TEXT_ARCHITECTURES:
        ModelRegistry.register_model(architecture, MODEL_CLASS)
    for model_type in MODEL_TYPES:
        register_chat_template_fallback_path(model_type, chat_template_path)
