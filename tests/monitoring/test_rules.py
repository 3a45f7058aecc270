"""The chart's Prometheus rules pass ``promtool check rules`` and the ``promtool test rules`` cases in
``rules_test.yaml`` (each alert fires on its fault and not on a healthy fleet); the Grafana dashboard
is well-formed and its queries parse."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from tooling import REPO, run, tool

FILES = REPO / "charts" / "flywheel" / "files"
RULES = FILES / "prometheus" / "flywheel-rules.yaml"
DASHBOARD = FILES / "grafana" / "flywheel.json"
RULES_TEST = Path(__file__).parent / "rules_test.yaml"
REQUIRED_ALERTS = {
    "FlywheelSLOErrorBudgetBurn",
    "FlywheelGPUUnhealthy",
    "FlywheelGPUXidError",
    "FlywheelCircuitBreakerOpen",
    "FlywheelAgentHeartbeatLost",
    "FlywheelClockControlStuck",
}


def alerts() -> dict[str, str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r["alert"]: r["expr"] for g in groups for r in g["rules"] if "alert" in r}


def dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p["targets"]]


def test_promtool_check_rules() -> None:
    result = run([tool("promtool"), "check", "rules", str(RULES)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules() -> None:
    result = run([tool("promtool"), "test", "rules", str(RULES_TEST)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_every_required_alert_exists_and_is_tested() -> None:
    assert set(alerts()) >= REQUIRED_ALERTS
    tested = {
        case["alertname"]
        for test in yaml.safe_load(RULES_TEST.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    }
    assert set(alerts()) <= tested


def test_promtool_test_rules_can_fail(tmp_path: Path) -> None:
    broken = yaml.safe_load(RULES_TEST.read_text())
    broken["rule_files"] = [str(RULES)]
    case = broken["tests"][1]["alert_rule_test"][0]
    assert case["alertname"] == "FlywheelGPUUnhealthy" and case["exp_alerts"] == []
    case["eval_time"] = "5m"  # GPU-a is unhealthy by then: "no alert" is wrong
    path = tmp_path / "broken_test.yaml"
    path.write_text(yaml.safe_dump(broken))
    assert run([tool("promtool"), "test", "rules", str(path)]).returncode != 0


def test_dashboard_is_grafana_json_with_a_query_per_panel() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("power", "energy", "tokens per joule", "clock", "slo", "burn", "incident", "breaker"):
        assert topic in titles, topic
