"""Fakes shared by the agent tests: a sysfs tree and a virtual clock."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class FakeSysfs:
    """A /sys tree in tmp_path with NICs and InfiniBand ports the tests can break."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def add_nic(
        self, name: str, operstate: str = "up", carrier_changes: int = 2, physical: bool = True
    ) -> None:
        d = self.root / "class" / "net" / name
        d.mkdir(parents=True, exist_ok=True)
        if physical:
            (d / "device").mkdir(exist_ok=True)
        (d / "operstate").write_text(operstate + "\n")
        (d / "carrier_changes").write_text(f"{carrier_changes}\n")

    def set_nic(self, name: str, operstate: str | None = None, carrier_changes: int | None = None) -> None:
        d = self.root / "class" / "net" / name
        if operstate is not None:
            (d / "operstate").write_text(operstate + "\n")
        if carrier_changes is not None:
            (d / "carrier_changes").write_text(f"{carrier_changes}\n")

    def add_ib(
        self, dev: str, port: int = 1, state: str = "4: ACTIVE", phys: str = "5: LinkUp", downed: int = 0
    ) -> None:
        p = self.root / "class" / "infiniband" / dev / "ports" / str(port)
        (p / "counters").mkdir(parents=True, exist_ok=True)
        (p / "state").write_text(state + "\n")
        (p / "phys_state").write_text(phys + "\n")
        (p / "counters" / "link_downed").write_text(f"{downed}\n")

    def set_ib(
        self,
        dev: str,
        port: int = 1,
        state: str | None = None,
        phys: str | None = None,
        downed: int | None = None,
    ) -> None:
        p = self.root / "class" / "infiniband" / dev / "ports" / str(port)
        if state is not None:
            (p / "state").write_text(state + "\n")
        if phys is not None:
            (p / "phys_state").write_text(phys + "\n")
        if downed is not None:
            (p / "counters" / "link_downed").write_text(f"{downed}\n")


class VirtualClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeSink:
    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []
        self.events: list[tuple[str, str, str]] = []
        self.fail = False

    def patch_status(self, node: str, status: dict[str, Any]) -> bool:
        if self.fail:
            return False
        self.patches.append(status)
        return True

    def emit_event(self, node: str, type_: str, reason: str, message: str) -> bool:
        if self.fail:
            return False
        self.events.append((type_, reason, message))
        return True
