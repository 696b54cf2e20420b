"""Chat templates (Jinja, from the tokenizer config) rendered the way transformers renders them."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from ember.errors import InvalidRequestError


@lru_cache(maxsize=4)
def _compile(template: str) -> Any:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise InvalidRequestError(message, param="messages")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template)


def render_chat(settings: dict[str, Any], messages: list[dict[str, Any]]) -> str:
    """The prompt text for `messages`, ending with the assistant's generation prompt."""
    template = settings.get("chat_template")
    if not template:
        raise InvalidRequestError("this model has no chat template; use /v1/completions", param="messages")
    if not messages:
        raise InvalidRequestError("'messages' must not be empty", param="messages")
    return _compile(template).render(messages=messages, add_generation_prompt=True,
                                     bos_token=settings.get("bos_token") or "", eos_token=settings.get("eos_token") or "")
