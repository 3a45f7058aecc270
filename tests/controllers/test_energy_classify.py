from __future__ import annotations

import pytest

from flywheel.api.v1alpha1 import AUTO_CLASS_NAMES, RequestClassesSpec
from flywheel.controllers.routing.classify import (
    ClassThresholds,
    classify,
    neighbours,
    thresholds_from_samples,
)


def test_default_thresholds_match_the_api_defaults() -> None:
    assert ClassThresholds.from_spec(RequestClassesSpec()) == ClassThresholds()


@pytest.mark.parametrize(
    ("prompt", "output", "expected"),
    [
        (100, 10, "ss"),
        (512, 64, "ss"),
        (513, 65, "mm"),
        (2048, 256, "mm"),
        (2049, 257, "ll"),
        (100, 1000, "sl"),
    ],
)
def test_classify_uses_inclusive_upper_bounds(prompt: int, output: int, expected: str) -> None:
    assert classify(prompt, output, ClassThresholds()) == expected


def test_custom_thresholds_from_spec() -> None:
    spec = RequestClassesSpec(input_thresholds_tokens=[100, 200], output_thresholds_tokens=[10, 20])
    th = ClassThresholds.from_spec(spec)
    assert classify(150, 15, th) == "mm"
    assert classify(250, 5, th) == "ls"


def test_thresholds_must_increase() -> None:
    with pytest.raises(ValueError, match="increasing"):
        ClassThresholds(input_tokens=(10, 10))


def test_every_class_has_neighbours_on_the_grid_longer_output_first() -> None:
    for name in AUTO_CLASS_NAMES:
        nb = neighbours(name)
        assert 2 <= len(nb) <= 4
        assert all(n in AUTO_CLASS_NAMES and n != name for n in nb)
    assert neighbours("ss")[0] == "sm"
    assert set(neighbours("mm")) == {"ml", "lm", "ms", "sm"}
    assert neighbours("ll") == ["ml", "lm"] or set(neighbours("ll")) == {"ml", "lm"}


def test_tercile_thresholds_split_a_trace_in_thirds() -> None:
    inputs = list(range(1, 301))
    outputs = [x * 2 for x in inputs]
    th = thresholds_from_samples(inputs, outputs)
    classes = [classify(i, o, th) for i, o in zip(inputs, outputs, strict=True)]
    for lvl in "sml":
        share = sum(c[0] == lvl for c in classes) / len(classes)
        assert 0.3 <= share <= 0.37
