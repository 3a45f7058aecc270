"""Live terminal view (rich) of the dev cluster: pools, instances, clocks, power, SLO, faults."""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text


@dataclass(frozen=True)
class PoolRow:
    name: str
    classes: str
    tensor_parallel: int
    wanted: int
    serving: int
    standbys: int
    load_rps: float


@dataclass(frozen=True)
class InstanceRow:
    name: str
    pool: str
    role: str
    node: str
    state: str
    clock_mhz: int | None
    power_watts: float
    running: int
    waiting: int


@dataclass
class Snapshot:
    elapsed_s: float = 0.0
    duration_s: float = 0.0
    speed: float = 1.0
    sent: int = 0
    served: int = 0
    failed: int = 0
    attainment: float | None = None
    power_watts: float = 0.0
    energy_joules: float = 0.0
    clock_changes: int = 0
    pools: list[PoolRow] = field(default_factory=list)
    instances: list[InstanceRow] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)
    phase: str = ""


def render(s: Snapshot) -> RenderableType:
    head = Text()
    head.append(f"{s.phase}  ", style="bold")
    trace_s = s.elapsed_s * s.speed
    head.append(f"t={s.elapsed_s:5.1f}/{s.duration_s:.0f}s wall  (trace x{s.speed:g}: {trace_s:6.0f}s)  ")
    head.append(f"requests {s.served}/{s.sent} served, {s.failed} failed  ")
    slo = "-" if s.attainment is None else f"{100 * s.attainment:.1f}%"
    head.append(f"SLO {slo}  ", style="green" if (s.attainment or 0) >= 0.99 else "yellow")
    head.append(f"power {s.power_watts / 1000:.2f} kW  energy {s.energy_joules / 3.6e6:.3f} kWh  ")
    head.append(f"clock changes {s.clock_changes}")

    pools = Table(title="Pools", expand=True, title_justify="left")
    for column in ("pool", "classes", "TP", "serving/wanted", "standbys", "req/s"):
        pools.add_column(column)
    for p in s.pools:
        style = "green" if p.serving >= p.wanted else "red"
        pools.add_row(
            p.name,
            p.classes,
            str(p.tensor_parallel),
            Text(f"{p.serving}/{p.wanted}", style=style),
            str(p.standbys),
            f"{p.load_rps:.2f}",
        )

    instances = Table(title="Instances", expand=True, title_justify="left")
    instances.add_column("instance", no_wrap=True)
    for column in ("role", "node", "state", "MHz", "W", "run", "wait"):
        instances.add_column(column, no_wrap=True)
    for i in s.instances:
        state_style = {"Serving": "green", "Standby": "cyan", "Loading": "yellow"}.get(i.state, "red")
        instances.add_row(
            i.name,
            i.role,
            i.node,
            Text(i.state, style=state_style),
            "-" if i.clock_mhz is None else str(i.clock_mhz),
            f"{i.power_watts:.0f}",
            str(i.running),
            str(i.waiting),
        )
    parts: list[RenderableType] = [head, pools, instances]
    if s.faults:
        parts.append(Panel("\n".join(s.faults), title="Faults", title_align="left"))
    return Group(*parts)


def one_line(s: Snapshot) -> str:
    slo = "-" if s.attainment is None else f"{100 * s.attainment:.1f}%"
    serving = sum(p.serving for p in s.pools)
    clocks = sorted({i.clock_mhz for i in s.instances if i.clock_mhz is not None})
    return (
        f"[{s.phase}] t={s.elapsed_s:.0f}s served={s.served}/{s.sent} failed={s.failed} SLO={slo} "
        f"serving={serving} power={s.power_watts:.0f}W energy={s.energy_joules:.0f}J "
        f"clock_changes={s.clock_changes} clocks={clocks}"
    )
