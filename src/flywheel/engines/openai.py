"""The slice of the OpenAI API that the router and the simulated engine share: ``/v1/completions`` and
``/v1/chat/completions`` requests, and OpenAI-style error bodies.

Token counts: a list of token ids counts exactly; a string counts as ``ceil(len / 4)`` tokens, the
usual characters-per-token of English BPE vocabularies, unless a ``count`` function (the model's real
tokenizer, where the router has its files) is given. A chat prompt counts its messages' text plus
``TOKENS_PER_MESSAGE`` per message and ``REPLY_PRIMING_TOKENS`` once (the chat template's role markers,
as OpenAI's cookbook counts them). The router classifies by the same count the simulated engine charges
for, so classification and service agree; accounting uses the engine's reported ``usage``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

TokenCounter = Callable[[str], int]

CHARS_PER_TOKEN = 4
DEFAULT_MAX_TOKENS = 16  # the OpenAI completions default
TOKENS_PER_MESSAGE = 3
REPLY_PRIMING_TOKENS = 3


class BadRequest(ValueError):
    """The request body is not a valid request (answered with HTTP 400). ``param``: the offending field."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def prompt_token_count(prompt: object, count: TokenCounter = estimate_tokens) -> int:
    if isinstance(prompt, str):
        return max(1, count(prompt))
    if (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    ):
        return len(prompt)
    if isinstance(prompt, list) and len(prompt) == 1:
        return prompt_token_count(prompt[0], count)
    raise BadRequest("prompt must be a string, a list of token ids, or a list with one of those", "prompt")


def _content_text(content: object) -> str:
    """A message's text: a string, or a list of ``{"type": "text", "text": ...}`` parts."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or not isinstance(part.get("text", ""), str):
                raise BadRequest("message content parts must be objects with a 'text' string", "messages")
            texts.append(part.get("text", ""))
        return "".join(texts)
    raise BadRequest("message content must be a string or a list of text parts", "messages")


def chat_token_count(messages: object, count: TokenCounter = estimate_tokens) -> int:
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list", "messages")
    total = REPLY_PRIMING_TOKENS
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest("each message must be an object with a 'role' string", "messages")
        text = _content_text(message.get("content"))
        total += TOKENS_PER_MESSAGE + count(text)
    return total


def prompt_of_length(tokens: int) -> str:
    """A prompt string that counts as exactly ``tokens`` tokens (trace replay)."""
    return "word" * tokens


@dataclass(frozen=True)
class CompletionRequest:
    model: str | None
    prompt_tokens: int
    max_tokens: int
    stream: bool
    include_usage: bool
    # Simulation hint: after how many tokens the model would emit EOS (trace replay). Routers must not
    # read it; the simulated engine stops at min(max_tokens, output_tokens).
    output_tokens: int | None = None
    chat: bool = False

    @property
    def generated_tokens(self) -> int:
        if self.output_tokens is None:
            return self.max_tokens
        return max(1, min(self.max_tokens, self.output_tokens))

    @classmethod
    def parse(
        cls, body: object, *, chat: bool = False, count: TokenCounter = estimate_tokens
    ) -> CompletionRequest:
        """A ``/v1/completions`` body, or with ``chat`` a ``/v1/chat/completions`` body; ``count``
        counts the tokens of a text."""
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        if chat:
            if "messages" not in body:
                raise BadRequest("'messages' is required", "messages")
            prompt_tokens = chat_token_count(body["messages"], count)
            max_name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        else:
            if "prompt" not in body:
                raise BadRequest("'prompt' is required", "prompt")
            prompt_tokens = prompt_token_count(body["prompt"], count)
            max_name = "max_tokens"
        max_tokens = body.get(max_name, DEFAULT_MAX_TOKENS)
        if max_tokens is None:
            max_tokens = DEFAULT_MAX_TOKENS
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise BadRequest(f"'{max_name}' must be a positive integer", max_name)
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise BadRequest("'stream' must be a boolean", "stream")
        options = body.get("stream_options") or {}
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            raise BadRequest("'model' must be a string", "model")
        hint = body.get("flywheel")
        output_tokens = hint.get("output_tokens") if isinstance(hint, dict) else None
        if output_tokens is not None and (
            not isinstance(output_tokens, int) or isinstance(output_tokens, bool) or output_tokens < 1
        ):
            raise BadRequest("'flywheel.output_tokens' must be a positive integer", "flywheel")
        return cls(
            model=model,
            prompt_tokens=prompt_tokens,
            max_tokens=max_tokens,
            stream=stream,
            include_usage=bool(isinstance(options, dict) and options.get("include_usage")),
            output_tokens=output_tokens,
            chat=chat,
        )


def error_body(message: str, kind: str, code: int | str, param: str | None = None) -> dict[str, Any]:
    """An OpenAI-style error: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
