"""Policy registry: names the simulator (``flywheel simulate --policy a,b``) can run.

Register a policy by name with a zero-argument factory that returns a fresh
``flywheel.controllers.protocol.Policy``::

    from flywheel.sim.registry import register_policy
    register_policy("flywheel", lambda: FlywheelPolicy())

Built in: ``static``, ``throttllem``, ``dynamollm`` (``flywheel.controllers.baselines``) and the
hindsight reference ``oracle`` (``flywheel.controllers.baselines.oracle``, handed the whole trace). A
``flywheel`` policy is looked up lazily in ``flywheel.controllers.energy.flywheel`` (module attribute
``make_policy``) when that module exists, so the energy-controllers package plugs in without editing
the simulator.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from flywheel.controllers.protocol import Policy

PolicyFactory = Callable[[], Policy]

_REGISTRY: dict[str, PolicyFactory] = {}
_LAZY: dict[str, tuple[str, str]] = {
    "static": ("flywheel.controllers.baselines.static", "StaticPolicy"),
    "throttllem": ("flywheel.controllers.baselines.throttllem", "ThrottLLeMPolicy"),
    "dynamollm": ("flywheel.controllers.baselines.dynamollm", "DynamoLLMPolicy"),
    "flywheel": ("flywheel.controllers.energy.flywheel", "make_policy"),
    "oracle": ("flywheel.controllers.baselines.oracle", "OraclePolicy"),
}
BASELINES = ("static", "throttllem", "dynamollm")


def register_policy(name: str, factory: PolicyFactory) -> None:
    """Make ``name`` selectable; a later registration under the same name replaces the earlier one."""
    _REGISTRY[name] = factory


def _lazy_factory(name: str) -> PolicyFactory | None:
    target = _LAZY.get(name)
    if target is None:
        return None
    module_name, attr = target
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None
        raise
    factory: PolicyFactory = getattr(module, attr)
    return factory


def available_policies() -> list[str]:
    names = set(_REGISTRY)
    names.update(name for name in _LAZY if name in _REGISTRY or _lazy_factory(name) is not None)
    return sorted(names)


def make_policy(name: str) -> Policy:
    """A fresh policy instance; ``KeyError`` naming the choices when ``name`` is unknown."""
    factory = _REGISTRY.get(name) or _lazy_factory(name)
    if factory is None:
        raise KeyError(f"unknown policy {name!r}; available: {', '.join(available_policies())}")
    return factory()
