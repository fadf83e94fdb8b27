"""The optional GPT judge of LLaVA-Bench and MM-Vet: a `Judge` is any callable prompt -> reply.

Scorers take a judge as an argument and never reach the network on their own; the command lines
build one with `openai_judge` only when `--judge-model` is given. Tests pass a plain function.
"""

from __future__ import annotations

from collections.abc import Callable

from llava.optional import optional_dependency

Judge = Callable[[str], str]

SYSTEM_PROMPT = "You are a helpful and precise assistant for checking the quality of the answer."


def openai_judge(model: str, temperature: float = 0.2, max_tokens: int = 1024) -> Judge:
    """A judge backed by the OpenAI chat API (needs the `openai` package and OPENAI_API_KEY)."""
    with optional_dependency():
        from openai import OpenAI
    client = OpenAI()

    def judge(prompt: str) -> str:
        response = client.chat.completions.create(
            model=model,
            messages=[{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}],
            temperature=temperature,
            max_tokens=max_tokens,
        )
        return response.choices[0].message.content or ""

    return judge
