"""The slice of the OpenAI completions API that the router and the simulated engine share.

Token counts: a list of token ids counts exactly; a string counts as ``ceil(len / 4)`` tokens, the
usual characters-per-token of English BPE vocabularies. The router classifies by the same count the
simulated engine charges for, so classification and service agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

CHARS_PER_TOKEN = 4
DEFAULT_MAX_TOKENS = 16  # the OpenAI completions default


class BadRequest(ValueError):
    """The request body is not a valid completions request (answered with HTTP 400)."""


def prompt_token_count(prompt: object) -> int:
    if isinstance(prompt, str):
        return max(1, math.ceil(len(prompt) / CHARS_PER_TOKEN))
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return len(prompt)
    if isinstance(prompt, list) and len(prompt) == 1:
        return prompt_token_count(prompt[0])
    raise BadRequest("prompt must be a string, a list of token ids, or a list with one of those")


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

    @property
    def generated_tokens(self) -> int:
        if self.output_tokens is None:
            return self.max_tokens
        return max(1, min(self.max_tokens, self.output_tokens))

    @classmethod
    def parse(cls, body: object) -> CompletionRequest:
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        if "prompt" not in body:
            raise BadRequest("'prompt' is required")
        max_tokens = body.get("max_tokens", DEFAULT_MAX_TOKENS)
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise BadRequest("'max_tokens' must be a positive integer")
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise BadRequest("'stream' must be a boolean")
        options = body.get("stream_options") or {}
        model = body.get("model")
        hint = body.get("flywheel")
        output_tokens = hint.get("output_tokens") if isinstance(hint, dict) else None
        if output_tokens is not None and (not isinstance(output_tokens, int) or output_tokens < 1):
            raise BadRequest("'flywheel.output_tokens' must be a positive integer")
        return cls(
            model=model if isinstance(model, str) else None,
            prompt_tokens=prompt_token_count(body["prompt"]),
            max_tokens=max_tokens,
            stream=stream,
            include_usage=bool(isinstance(options, dict) and options.get("include_usage")),
            output_tokens=output_tokens,
        )


def error_body(message: str, kind: str, code: int) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "code": code}}
