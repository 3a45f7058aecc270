"""A real Prometheus server (Debian's ``prometheus``) scrapes every Flywheel endpoint (in process, with
injected faults: see ``fleet.py``) and evaluates the chart's rules; every Grafana dashboard query and
every alert expression must return series. Rule groups are evaluated every second here instead of
every 30 s; the expressions are the chart's, unchanged."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fleet import Fleet
from test_rules import RULES, alerts, dashboard_queries
from tooling import tool

DEADLINE_S = 60.0  # generous: series normally appear within a few scrapes of 1 s


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(ports: dict[str, int], rules: Path) -> dict[str, Any]:
    def job(name: str, endpoints: list[str], **labels: str) -> dict[str, Any]:
        targets = [f"127.0.0.1:{ports[e]}" for e in endpoints]
        return {"job_name": name, "static_configs": [{"targets": targets, "labels": labels}]}

    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [
            job("flywheel-agent", ["agent-node-a", "agent-node-b"]),
            job("flywheel-operator", ["operator"]),
            # PodMonitor relabelling gives router and engine series their deployment and namespace.
            job("flywheel-router", ["router"], namespace="team-a", deployment="llama"),
            job("flywheel-engine", ["engine"], namespace="team-a", deployment="llama"),
        ],
    }


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[httpx.Client, Fleet]]:
    fleet = Fleet()
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        group["interval"] = "1s"
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    stop = threading.Event()

    def traffic() -> None:
        while not stop.wait(0.5):
            fleet.tick()

    with fleet.serving() as ports:
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(_config(ports, tmp_path / "rules.yaml")))
        port = _free_port()
        server = subprocess.Popen(
            [
                tool("prometheus"),
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / "prometheus.log").open("w"),
        )
        ticker = threading.Thread(target=traffic, daemon=True)
        ticker.start()
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                deadline = time.monotonic() + DEADLINE_S
                while True:
                    assert server.poll() is None, (tmp_path / "prometheus.log").read_text()
                    try:
                        if client.get("/-/ready").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    assert time.monotonic() < deadline, "prometheus did not become ready"
                    time.sleep(0.2)
                yield client, fleet
        finally:
            stop.set()
            ticker.join(timeout=10)
            server.terminate()
            server.wait(timeout=30)


def _series(client: httpx.Client, expr: str) -> int:
    response = client.get("/api/v1/query", params={"query": expr})
    body = response.json()
    assert body.get("status") == "success", f"{expr}: {body}"
    return len(body["data"]["result"])


def _wait_for_series(client: httpx.Client, exprs: list[str]) -> list[str]:
    """The expressions still without series when the deadline passes (empty: all have series)."""
    pending = list(dict.fromkeys(exprs))
    deadline = time.monotonic() + DEADLINE_S
    while pending and time.monotonic() < deadline:
        pending = [e for e in pending if _series(client, e) == 0]
        if pending:
            time.sleep(0.5)
    return pending


def test_every_dashboard_query_and_alert_expression_returns_series(
    prometheus: tuple[httpx.Client, Fleet],
) -> None:
    client, _ = prometheus
    queries = dashboard_queries()
    expressions = list(alerts().values())
    assert len(queries) >= 15 and len(expressions) >= 6
    assert _wait_for_series(client, queries + expressions) == []
    # Every scrape target is up and the rules loaded without evaluation errors.
    targets = client.get("/api/v1/targets").json()["data"]["activeTargets"]
    assert len(targets) == 5 and all(t["health"] == "up" for t in targets), targets
    groups = client.get("/api/v1/rules").json()["data"]["groups"]
    assert groups and all(r["health"] == "ok" for g in groups for r in g["rules"]), groups


def test_a_healthy_fleet_does_not_match_the_fault_alerts(prometheus: tuple[httpx.Client, Fleet]) -> None:
    """The check can fail: an expression with no matching data returns no series."""
    client, _ = prometheus
    assert _wait_for_series(client, ["flywheel_gpu_healthy"]) == []
    assert _series(client, 'flywheel_gpu_healthy{hostname="node-b"} == 0') == 0
    beating = 'flywheel_agent_check_duration_seconds_count{hostname="node-a"}'
    assert _series(client, f"sum by (hostname) (increase({beating}[2m])) == 0") == 0
