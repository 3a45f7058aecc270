"""Both entry points run the same operator: ``kopf run -m flywheel.operator.kopf_entry`` and
``flywheel operator``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from emulator_thread import EmulatorThread
from opharness import FW, add_gpu_node, items, model_deployment, wait_for

BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    "command",
    [
        [str(BIN / "kopf"), "run", "-m", "flywheel.operator.kopf_entry", "-A", "--standalone"],
        [str(BIN / "flywheel"), "operator", "-A", "--standalone", "--resync=1", "--insecure"],
    ],
    ids=["kopf-run-m", "flywheel-operator"],
)
def test_entry_point_reconciles(command: list[str]) -> None:
    with EmulatorThread() as emu, httpx.Client(base_url=emu.url, timeout=10) as http:
        add_gpu_node(http, "n0")
        env = dict(os.environ, FLYWHEEL_KUBE_SERVER=emu.url, FLYWHEEL_KUBE_INSECURE="1")
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            # The default energy brain needs a calibrated model: it starts one pool, 1 + 1 standby.
            llama = {
                "name": "meta-llama/Llama-2-70b-hf",
                "parametersMillions": 70000,
                "weightSource": "hf://m/l",
            }
            body = model_deployment("cli", model=llama, gpu={"allowedTensorParallel": [2]})
            http.post(f"{FW}/namespaces/default/modeldeployments", json=body).raise_for_status()
            sel = "flywheel.dev/deployment=cli"
            wait_for(lambda: len(items(http, "/api/v1/namespaces/default/pods", sel)) == 2)
        finally:
            process.terminate()
            process.wait(timeout=30)


def _default_registry_handlers(module: str) -> int:
    """How many handlers kopf's default registry holds after importing ``module`` in a fresh process."""
    code = (
        "import kopf, importlib\n"
        f"importlib.import_module({module!r})\n"
        "r = kopf.get_default_registry()\n"
        "print(len(r._watching.get_all_handlers()) + len(r._activities.get_all_handlers())"
        " + len(r._spawning.get_all_handlers()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return int(out.stdout.strip())


def test_importing_the_package_registers_nothing_only_the_kopf_entry_does() -> None:
    kopf_alone = _default_registry_handlers("kopf")  # kopf's own default login handler
    assert _default_registry_handlers("flywheel.operator") == kopf_alone
    assert _default_registry_handlers("flywheel.operator.main") == kopf_alone
    assert _default_registry_handlers("flywheel.operator.kopf_entry") > kopf_alone + 10


def test_engine_pod_settings_come_from_the_flags_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from flywheel.cli import app
    from flywheel.operator.config import OperatorConfig

    seen: list[OperatorConfig] = []
    monkeypatch.setattr("flywheel.operator.cli.run", seen.append)  # capture instead of starting kopf
    runner = CliRunner()
    flags = ["operator", "--standalone", "--engine-runtime-class", "nvidia"]
    ok = runner.invoke(app, [*flags, "--weight-cache-host-path", "/var/cache/fw/"])
    assert ok.exit_code == 0, ok.output
    assert (seen[0].engine_runtime_class, seen[0].weight_cache_host_path) == ("nvidia", "/var/cache/fw")
    bad = runner.invoke(app, [*flags, "--weight-cache-host-path", "relative/dir"])
    assert bad.exit_code != 0 and len(seen) == 1  # never started with a bad setting
    assert "weight cache host path 'relative/dir' must be an absolute" in str(bad.exception) + bad.output
