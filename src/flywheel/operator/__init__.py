"""The Flywheel operator (kopf): ModelDeployment -> ServingPools -> ModelInstances -> engine Pods.

Importing this package registers the handlers in kopf's default registry with the configuration from
``FLYWHEEL_*`` environment variables, so ``kopf run -m flywheel.operator`` works; ``flywheel operator``
builds its own registry from command-line options (``flywheel.operator.runner``).
"""

from __future__ import annotations

import kopf

from flywheel.operator.config import OperatorConfig
from flywheel.operator.handlers import register

operator = register(kopf.get_default_registry(), OperatorConfig.from_env())

__all__ = ["OperatorConfig", "operator", "register"]
