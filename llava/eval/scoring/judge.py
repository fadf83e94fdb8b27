"""The optional GPT judge of LLaVA-Bench, MM-Vet and the video benchmarks: a `Judge` is any callable prompt -> reply.

Scorers take a judge as an argument and never reach the network on their own; the command lines
build one with `openai_judge` only when `--judge-model` is given. Tests pass a plain function.
"""

from __future__ import annotations

from collections.abc import Callable

from llava.optional import optional_dependency

Judge = Callable[[str], str]

SYSTEM_PROMPT = "You are a helpful and precise assistant for checking the quality of the answer."


def openai_judge(
    model: str, temperature: float = 0.2, max_tokens: int = 1024, system_prompt: str = SYSTEM_PROMPT
) -> Judge:
    """A judge backed by the OpenAI chat API (needs the `openai` package and OPENAI_API_KEY).

    `system_prompt` is the judge's instruction (each video criterion has its own).
    """
    with optional_dependency():
        from openai import OpenAI
    client = OpenAI()

    def judge(prompt: str) -> str:
        response = client.chat.completions.create(
            model=model,
            messages=[{"role": "system", "content": system_prompt}, {"role": "user", "content": prompt}],
            temperature=temperature,
            max_tokens=max_tokens,
        )
        return response.choices[0].message.content or ""

    return judge
