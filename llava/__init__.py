"""M3: Matryoshka Multimodal Models, a LLaVA-family model with nested visual tokens."""

__version__ = "0.1.0"
