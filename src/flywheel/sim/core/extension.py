"""The kernel's extension hooks.

An extension (``flywheel.sim.extensions``) subclasses :class:`Extension`, overrides the hooks it
needs and is registered with ``SimKernel.add_extension``; it acts on the kernel only through the
kernel's public API (``schedule``, ``start_instance``, ``drain``, ``evict``, ``recover``, ``kick``,
``interrupt``, ``next_iteration``, ``pool_load``, ``ready_instances``, ``held_out``). Hooks run in
registration order.
"""

from __future__ import annotations

from flywheel.sim.core.entities import SimInstance, SimPool
from flywheel.sim.core.events import Event

__all__ = ["Extension"]


class Extension:
    """No-op hooks; override the ones an extension needs."""

    def on_event(self, event: Event) -> bool:
        """Handle one of the extension's own events; False when it is not this extension's."""
        return False

    def on_ready(self, instance: SimInstance) -> None:
        """After a ready event was applied (also when the instance was no longer starting)."""

    def accepts_work(self, instance: SimInstance) -> bool:
        """Whether the instance may take queued requests now (routing weight, health)."""
        return True

    def held_out(self, instance: SimInstance) -> bool:
        """Whether the fault handler holds the instance out of traffic (routing weight 0): what an
        operator knows, unlike an engine fault nobody has detected yet."""
        return False

    def before_iteration(self, instance: SimInstance) -> bool:
        """Before the instance plans its next iteration; False: it does not run one now (the
        extension set its state)."""
        return True

    def reconcile(self, pool: SimPool, initial: bool) -> bool:
        """Reconcile ``pool`` in place of the kernel; False leaves it to the kernel."""
        return False
