"""Request classification into the nine DynamoLLM classes: {short, medium, long} input x {short,
medium, long} predicted output. Class names are ``AUTO_CLASS_NAMES`` ("ss" ... "ll", input letter
first).

Default thresholds are those of ``RequestClassesSpec`` (input 512 / 2048 tokens, output 64 / 256
tokens). They were checked against the Azure LLM inference traces 2023 (Patel et al., ISCA 2024,
CC-BY 4.0): input terciles of code+conv are about 445 / 1238 tokens and the code trace's P50 input is
1469, so 512 / 2048 separates chat-sized prompts from code-sized and long-context ones; output P90 is
55 tokens (code) and 424 (conv), so 64 / 256 separates completions from answers and long answers.
``thresholds_from_samples`` derives tercile thresholds from any trace instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from flywheel.api.v1alpha1 import AUTO_CLASS_NAMES, RequestClassesSpec

LEVELS = ("s", "m", "l")


@dataclass(frozen=True)
class ClassThresholds:
    """Upper bounds (inclusive) of the short and medium levels, for input and output tokens."""

    input_tokens: tuple[int, int] = (512, 2048)
    output_tokens: tuple[int, int] = (64, 256)

    def __post_init__(self) -> None:
        for name, (lo, hi) in (("input", self.input_tokens), ("output", self.output_tokens)):
            if not 0 < lo < hi:
                raise ValueError(f"{name} thresholds must be positive and increasing, got {lo}, {hi}")

    @classmethod
    def from_spec(cls, spec: RequestClassesSpec) -> ClassThresholds:
        i, o = spec.input_thresholds_tokens, spec.output_thresholds_tokens
        return cls(input_tokens=(i[0], i[1]), output_tokens=(o[0], o[1]))


def level(tokens: float, bounds: tuple[int, int]) -> str:
    if tokens <= bounds[0]:
        return "s"
    if tokens <= bounds[1]:
        return "m"
    return "l"


def input_level(input_tokens: float, thresholds: ClassThresholds) -> str:
    return level(input_tokens, thresholds.input_tokens)


def classify(input_tokens: float, predicted_output_tokens: float, thresholds: ClassThresholds) -> str:
    """The class name of a request from its input length and predicted output length."""
    return level(input_tokens, thresholds.input_tokens) + level(
        predicted_output_tokens, thresholds.output_tokens
    )


def neighbours(name: str) -> list[str]:
    """Classes adjacent to ``name`` on the 3x3 grid, the longer-output neighbour first (merging a
    class into a neighbour that serves longer requests keeps the merged pool's sizing conservative)."""
    if name not in AUTO_CLASS_NAMES:
        raise ValueError(f"unknown class {name!r}")
    i, o = LEVELS.index(name[0]), LEVELS.index(name[1])
    out: list[str] = []
    for di, do in ((0, 1), (1, 0), (0, -1), (-1, 0)):
        ni, no = i + di, o + do
        if 0 <= ni < 3 and 0 <= no < 3:
            out.append(LEVELS[ni] + LEVELS[no])
    return out


def thresholds_from_samples(input_tokens: Sequence[float], output_tokens: Sequence[float]) -> ClassThresholds:
    """Tercile thresholds of a trace (e.g. the Azure traces) for input and output length."""
    if len(input_tokens) < 3 or len(output_tokens) < 3:
        raise ValueError("need at least three samples to derive terciles")
    qi = np.percentile(np.asarray(input_tokens, dtype=float), [100 / 3, 200 / 3])
    qo = np.percentile(np.asarray(output_tokens, dtype=float), [100 / 3, 200 / 3])
    i0, o0 = max(1, round(qi[0])), max(1, round(qo[0]))
    return ClassThresholds(
        input_tokens=(i0, max(i0 + 1, round(qi[1]))), output_tokens=(o0, max(o0 + 1, round(qo[1])))
    )
