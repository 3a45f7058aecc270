"""Request classes: which class a request belongs to, by prompt length and predicted output length."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from flywheel.api.v1alpha1 import ModelDeploymentSpec, PoolRequestClass, RequestClassMode
from flywheel.controllers.resources.desired import request_classes
from flywheel.controllers.routing.classify import ClassThresholds, classify


class RequestClassifier(Protocol):
    def __call__(self, prompt_tokens: int, predicted_output_tokens: int) -> str: ...


@dataclass(frozen=True)
class AutoClassifier:
    """The nine DynamoLLM classes (``controllers.classify``) under the deployment's thresholds."""

    thresholds: ClassThresholds = field(default_factory=ClassThresholds)

    def __call__(self, prompt_tokens: int, predicted_output_tokens: int) -> str:
        return classify(prompt_tokens, predicted_output_tokens, self.thresholds)


@dataclass(frozen=True)
class BoundsClassifier:
    """Explicit classes (``requestClasses.mode: Explicit``): the first class, in the order declared,
    whose token bounds hold the request; requests beyond every bound go to the last class."""

    classes: tuple[PoolRequestClass, ...]

    def __post_init__(self) -> None:
        if not self.classes:
            raise ValueError("at least one request class is needed")

    def __call__(self, prompt_tokens: int, predicted_output_tokens: int) -> str:
        for rc in self.classes:
            if (rc.max_input_tokens is None or prompt_tokens <= rc.max_input_tokens) and (
                rc.max_output_tokens is None or predicted_output_tokens <= rc.max_output_tokens
            ):
                return rc.name
        return self.classes[-1].name


def classifier_for(spec: ModelDeploymentSpec) -> RequestClassifier:
    """The router's classifier for a deployment's ``requestClasses``."""
    if spec.request_classes.mode == RequestClassMode.EXPLICIT:
        return BoundsClassifier(tuple(request_classes(spec)))
    return AutoClassifier(ClassThresholds.from_spec(spec.request_classes))
