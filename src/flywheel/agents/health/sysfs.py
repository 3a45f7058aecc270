"""NIC and InfiniBand state from sysfs (``/sys/class/net``, ``/sys/class/infiniband``).

The root is configurable so tests build a fake tree; the DaemonSet mounts the host's /sys read-only.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path

from flywheel.agents.health.findings import Finding, Scope
from flywheel.api.v1alpha1 import Action, SignalType

IB_ACTIVE = "ACTIVE"
IB_LINK_UP = "LinkUp"


@dataclass(frozen=True)
class NicState:
    name: str
    operstate: str | None
    carrier_changes: int | None


@dataclass(frozen=True)
class IbPortState:
    device: str
    port: str
    state: str | None  # "ACTIVE", "DOWN", ...
    phys_state: str | None  # "LinkUp", "Polling", "Disabled", ...
    link_downed: int | None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _read_int(path: Path) -> int | None:
    text = _read(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _after_colon(text: str | None) -> str | None:
    # IB sysfs writes "4: ACTIVE" / "5: LinkUp".
    if text is None:
        return None
    return text.split(":", 1)[1].strip() if ":" in text else text


class SysfsNetwork:
    """Reads NIC and IB port state; ``interfaces`` None means every physical interface (has ``device``)."""

    def __init__(self, root: Path = Path("/sys"), interfaces: list[str] | None = None) -> None:
        self.root = root
        self.interfaces = interfaces

    def nics(self) -> list[NicState]:
        base = self.root / "class" / "net"
        if self.interfaces is not None:
            names = self.interfaces
        else:
            try:
                names = sorted(p.name for p in base.iterdir() if (p / "device").exists())
            except OSError:
                names = []
        return [
            NicState(n, _read(base / n / "operstate"), _read_int(base / n / "carrier_changes")) for n in names
        ]

    def ib_ports(self) -> list[IbPortState]:
        base = self.root / "class" / "infiniband"
        out: list[IbPortState] = []
        try:
            devices = sorted(base.iterdir())
        except OSError:
            return out
        for dev in devices:
            try:
                ports = sorted((dev / "ports").iterdir())
            except OSError:
                continue
            for port in ports:
                out.append(
                    IbPortState(
                        device=dev.name,
                        port=port.name,
                        state=_after_colon(_read(port / "state")),
                        phys_state=_after_colon(_read(port / "phys_state")),
                        link_downed=_read_int(port / "counters" / "link_downed"),
                    )
                )
        return out


class NetworkCheck:
    """Turns NIC/IB state into findings: link down now, or flapping within ``window_s``."""

    def __init__(self, network: SysfsNetwork, flap_threshold: int = 3, window_s: float = 300.0) -> None:
        self.network = network
        self.flap_threshold = flap_threshold
        self.window_s = window_s
        self._history: dict[str, deque[tuple[float, int]]] = {}

    def _flaps(self, key: str, now: float, counter: int | None) -> int:
        if counter is None:
            return 0
        hist = self._history.setdefault(key, deque())
        hist.append((now, counter))
        while hist and now - hist[0][0] > self.window_s:
            hist.popleft()
        return counter - hist[0][1]

    def check(self, now: float) -> list[Finding]:
        findings: list[Finding] = []
        for nic in self.network.nics():
            if nic.operstate is not None and nic.operstate != "up":
                findings.append(
                    Finding(
                        key=f"net/{nic.name}/down",
                        scope=Scope.NETWORK,
                        subject=nic.name,
                        signal=SignalType.NIC_DOWN,
                        reason="NICDown",
                        message=f"{nic.name} operstate is {nic.operstate}",
                        unhealthy=True,
                        action=Action.DRAIN_NODE,
                    )
                )
            flaps = self._flaps(f"net/{nic.name}", now, nic.carrier_changes)
            if flaps >= self.flap_threshold:
                findings.append(
                    Finding(
                        key=f"net/{nic.name}/flapping",
                        scope=Scope.NETWORK,
                        subject=nic.name,
                        signal=SignalType.NIC_DOWN,
                        reason="NICFlapping",
                        message=f"{nic.name} carrier changed {flaps} times in {self.window_s:.0f}s",
                        unhealthy=False,
                        action=Action.RUN_DIAGNOSTICS,
                    )
                )
        for port in self.network.ib_ports():
            name = f"{port.device}/{port.port}"
            if (port.state is not None and port.state != IB_ACTIVE) or (
                port.phys_state is not None and port.phys_state != IB_LINK_UP
            ):
                findings.append(
                    Finding(
                        key=f"ib/{name}/down",
                        scope=Scope.NETWORK,
                        subject=name,
                        signal=SignalType.NIC_DOWN,
                        reason="IBPortDown",
                        message=f"InfiniBand {name} state {port.state}, phys_state {port.phys_state}",
                        unhealthy=True,
                        action=Action.DRAIN_NODE,
                    )
                )
            downs = self._flaps(f"ib/{name}", now, port.link_downed)
            if downs >= 1:
                findings.append(
                    Finding(
                        key=f"ib/{name}/link-downed",
                        scope=Scope.NETWORK,
                        subject=name,
                        signal=SignalType.NIC_DOWN,
                        reason="IBLinkDowned",
                        message=f"InfiniBand {name} link_downed rose by {downs} in {self.window_s:.0f}s",
                        unhealthy=False,
                        action=Action.RUN_DIAGNOSTICS,
                    )
                )
        return findings
