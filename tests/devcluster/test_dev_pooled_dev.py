"""End to end: ``flywheel dev --pooled`` — beside the dedicated sample, three small models (8B, 14B
and 27B class) pooled on one GPUPool group; the dev kubelet runs their engines in sleep mode, the
operator's pooled router Deployment runs as a process, and the replay sends each model its
heavy-tailed share of the trace through it. Judged by the report: every model served, nothing lost,
switches in the router's metrics and in the GPUPool's status, every Pooled deployment Ready."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flywheel.devcluster.options import DevOptions
from flywheel.devcluster.pooled import MODELS, split
from flywheel.devcluster.stack import run_dev
from flywheel.operator.config import OperatorConfig

pytestmark = pytest.mark.timeout(300)


def test_split_is_heavy_tailed_and_seeded() -> None:
    models = split(10_000, seed=3)
    assert models == split(10_000, seed=3)
    counts = {name: models.count(name) for name in MODELS}
    assert counts["tiny-llama"] > counts["tiny-qwen"] > counts["tiny-gemma"] > 0
    assert abs(counts["tiny-llama"] / 10_000 - 0.6) < 0.03


def test_pooled_router_url_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert OperatorConfig.from_env().pooled_router_url("flywheel-system", "p-g0-router") == (
        "http://p-g0-router.flywheel-system.svc:80"
    )
    monkeypatch.setenv("FLYWHEEL_POOLED_ROUTER_URL", "http://127.0.0.1:9000/{namespace}/{service}")
    url = OperatorConfig.from_env().pooled_router_url("flywheel-system", "p-g0-router")
    assert url == "http://127.0.0.1:9000/flywheel-system/p-g0-router"


async def test_dev_pooled_serves_three_models_with_switches(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    options = DevOptions(
        duration_s=20.0,
        trace="conv",
        speed=20.0,
        nodes=2,
        inject=["none"],
        max_rps=3.0,
        pooled=True,
        pooled_rps=3.0,
        report=report_path,
        live=False,
        operator_log=tmp_path / "operator.log",
        progress=lambda message: None,
    )
    result = await run_dev(options)
    assert json.loads(report_path.read_text()) == json.loads(json.dumps(result))
    # The dedicated pools serving and every Pooled deployment Ready before the replay began.
    assert result["scenario"]["instances_ready_before_replay"]
    pooled = result["pooled"]
    # One sleep-mode engine per model, all on the group's one GPU, which no dedicated engine used.
    assert pooled["engines"] == len(MODELS) and len(pooled["gpus"]) == 1
    assert pooled["gpus_shared_with_dedicated"] == 0 and result["gpu_conflicts"] == 0
    for name, row in pooled["models"].items():
        requests = row["requests"]
        assert requests["sent"] == requests["planned"] > 0, (name, requests)
        assert requests["served"] == requests["sent"], (name, requests)  # every request served, 0 lost
        assert row["ready"], f"{name} is not Ready"
    sent = {name: row["requests"]["sent"] for name, row in pooled["models"].items()}
    assert sent["tiny-llama"] > sent["tiny-gemma"]  # the heavy head gets most of the traffic
    # Switches as the router counted them (Prometheus) and as the operator put them in the status.
    assert pooled["switches_total"] is not None and pooled["switches_total"] > 0
    status = pooled["status"]
    assert status["switchesPerMinute"] > 0 and status["modelCount"] == len(MODELS)
    assert status["switchSecondsP99"] >= status["switchSecondsP50"] > 0
    assert {m["deployment"] for m in pooled["status_models"]} == {f"default/{n}" for n in MODELS}
    # The dedicated sample kept serving beside the pool.
    assert result["requests"]["served"] > 0
