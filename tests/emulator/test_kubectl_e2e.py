"""The dev cluster's API driven by the real kubectl 1.37.1 (``make tools``), over real HTTP.

Each test is one workflow a platform engineer runs, asserting kubectl's exit code and output. They run
in file order against one emulator that starts empty of Flywheel CRDs (the first workflow applies
``crds/``); ``pytest -n`` keeps a file on one worker (``--dist loadfile``).
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from emulator_thread import EmulatorThread

from flywheel.devcluster.apiserver import kubeconfig

REPO = Path(__file__).resolve().parents[2]
KUBECTL = REPO / ".tools" / "bin" / "kubectl"
SAMPLE = REPO / "manifests" / "samples" / "modeldeployment.yaml"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmulatorThread, dict[str, str]]]:
    if not KUBECTL.exists():
        pytest.fail(f"{KUBECTL} is missing: run `make tools`")
    home = tmp_path_factory.mktemp("kubectl")
    with EmulatorThread(flywheel_crds=False) as emu:
        config = home / "kubeconfig"
        config.write_text(kubeconfig(emu.url))
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(home),
            "KUBECONFIG": str(config),
            "KUBECACHEDIR": str(home / "cache"),
        }
        yield emu, env


@pytest.fixture
def env(cluster: tuple[EmulatorThread, dict[str, str]]) -> dict[str, str]:
    return cluster[1]


def kubectl(
    env: dict[str, str], *args: str, stdin: str | None = None, extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(KUBECTL), *args],
        env=env | (extra or {}),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def ok(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    result = kubectl(env, *args, stdin=stdin)
    assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
    return result.stdout


def fails(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    result = kubectl(env, *args, stdin=stdin)
    assert result.returncode != 0, f"kubectl {' '.join(args)} should fail: {result.stdout}"
    return result.stderr


def sample(name: str = "llama2-70b", **spec: Any) -> dict[str, Any]:
    doc = yaml.safe_load(SAMPLE.read_text())
    doc["metadata"]["name"] = name
    for key, value in spec.items():
        doc["spec"][key] = value
    return doc


def as_yaml(*docs: dict[str, Any]) -> str:
    return yaml.safe_dump_all(docs)


def jsonpath(env: dict[str, str], kind: str, name: str, path: str, *flags: str) -> str:
    return ok(env, "get", kind, name, "-o", f"jsonpath={path}", *flags)


# --------------------------------------------------------------------------------------------------
# CRDs, samples, reading


def test_apply_crds(env: dict[str, str]) -> None:
    out = ok(env, "apply", "-f", str(REPO / "crds"))
    assert out.count("customresourcedefinition.apiextensions.k8s.io/") == 6 and out.count(" created") == 6


def test_wait_for_crds_established(env: dict[str, str]) -> None:
    out = ok(env, "wait", "--for=condition=Established", "crd", "--all", "--timeout=30s")
    assert out.count("condition met") == 6
    names = jsonpath(env, "crd", "modeldeployments.flywheel.dev", "{.status.conditions[*].type}")
    assert names.split() == ["NamesAccepted", "Established"]


def test_apply_k_flywheel_manifests(env: dict[str, str]) -> None:
    """The install step of the README: the base has no Prometheus Operator kinds, so a bare cluster
    takes all of it; the monitoring overlay's ServiceMonitor needs prometheus-operator's CRD, which
    this cluster (like a bare one) lacks, so kubectl reports it after applying everything else."""
    out = ok(env, "apply", "-k", str(REPO / "manifests" / "base"))
    assert "deployment.apps/flywheel-operator created" in out
    assert "daemonset.apps/flywheel-agent created" in out
    lines = ok(env, "get", "deployments", "-n", "flywheel-system").splitlines()
    assert lines[0].split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert lines[1].split()[:2] == ["flywheel-operator", "0/2"]  # two replicas (HA), no controller
    monitoring = kubectl(env, "apply", "-k", str(REPO / "manifests" / "overlays" / "monitoring"))
    assert monitoring.returncode == 1
    assert 'no matches for kind "ServiceMonitor" in version "monitoring.coreos.com/v1"' in monitoring.stderr


def test_strategic_merge_on_a_builtin_merges_keyed_lists(env: dict[str, str]) -> None:
    deploy = ("-n", "flywheel-system", "deploy/flywheel-operator")
    assert ok(env, "set", "image", *deploy, "operator=flywheel:dev").strip().endswith("image updated")
    assert ok(env, "set", "env", *deploy, "FOO=bar").strip().endswith("env updated")
    container = "{.spec.template.spec.containers[0]"
    get = ("get", "-n", "flywheel-system", "deploy", "flywheel-operator", "-o")
    assert ok(env, *get, f"jsonpath={container}.image}}") == "flywheel:dev"
    assert ok(env, *get, f"jsonpath={container}.env[*].name}}") == "POD_NAME FOO"  # merged by name
    assert ok(env, *get, f"jsonpath={container}.readinessProbe.periodSeconds}}") == "10"  # kept
    # Re-applying the manifests restores the image (three-way merge) and keeps the imperative env.
    kubectl(env, "apply", "-k", str(REPO / "manifests" / "base"))
    assert ok(env, *get, f"jsonpath={container}.image}}").startswith("ghcr.io/")
    assert ok(env, *get, f"jsonpath={container}.env[*].name}}") == "POD_NAME FOO"


def test_apply_sample(env: dict[str, str]) -> None:
    assert ok(env, "apply", "-f", str(SAMPLE)).strip() == "modeldeployment.flywheel.dev/llama2-70b created"


def test_get_shows_printer_columns(env: dict[str, str]) -> None:
    lines = ok(env, "get", "modeldeployments").splitlines()
    assert lines[0].split() == ["NAME", "READY", "INSTANCES", "TP", "POWER", "ENERGY", "AGE"]
    assert lines[1].startswith("llama2-70b ")


def test_get_wide_adds_priority_columns(env: dict[str, str]) -> None:
    lines = ok(env, "get", "md", "-o", "wide").splitlines()
    assert lines[0].split() == [
        "NAME",
        "READY",
        "INSTANCES",
        "TOTAL",
        "TP",
        "POWER",
        "ENERGY",
        "POLICY",
        "SHARING",
        "GPUPOOL",
        "AGE",
    ]
    assert "Balanced" in lines[1].split() and "Dedicated" in lines[1].split()


def test_get_yaml_has_server_defaults(env: dict[str, str]) -> None:
    doc = yaml.safe_load(ok(env, "get", "md", "llama2-70b", "-o", "yaml"))
    assert doc["kind"] == "ModelDeployment" and doc["metadata"]["generation"] == 1
    assert doc["spec"]["engine"]["port"] == 8000  # a CRD default the sample leaves out


def test_get_jsonpath(env: dict[str, str]) -> None:
    assert jsonpath(env, "md", "llama2-70b", "{.spec.model.name}") == "meta-llama/Llama-2-70b-chat-hf"


def test_get_by_label_and_short_name(env: dict[str, str]) -> None:
    ok(env, "label", "md", "llama2-70b", "tier=gold")
    assert (
        ok(env, "get", "md", "-l", "tier=gold", "-o", "name").strip()
        == "modeldeployment.flywheel.dev/llama2-70b"
    )
    assert "No resources found" in kubectl(env, "get", "md", "-l", "tier=silver").stderr


def test_describe_shows_events(env: dict[str, str]) -> None:
    uid = jsonpath(env, "md", "llama2-70b", "{.metadata.uid}")
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": "llama2-70b.scaled"},
        "involvedObject": {
            "apiVersion": "flywheel.dev/v1alpha1",
            "kind": "ModelDeployment",
            "name": "llama2-70b",
            "namespace": "default",
            "uid": uid,
        },
        "reason": "ScaledOut",
        "message": "2 instances for the evening peak",
        "type": "Normal",
        "count": 1,
        "firstTimestamp": "2026-12-01T00:00:00Z",
        "lastTimestamp": "2026-12-01T00:00:00Z",
        "source": {"component": "flywheel-operator"},
    }
    ok(env, "create", "-f", "-", stdin=json.dumps(event))
    out = ok(env, "describe", "md", "llama2-70b")
    assert "Name:         llama2-70b" in out and "Events:" in out
    assert "ScaledOut" in out and "2 instances for the evening peak" in out


def test_wait_for_ready_condition(env: dict[str, str]) -> None:
    status = {
        "status": {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "AllInstancesServing",
                    "message": "",
                    "lastTransitionTime": "2026-12-01T00:00:00Z",
                }
            ]
        }
    }
    ok(env, "patch", "md", "llama2-70b", "--subresource=status", "--type=merge", "-p", json.dumps(status))
    out = ok(env, "wait", "--for=condition=Ready", "md/llama2-70b", "--timeout=30s")
    assert out.strip() == "modeldeployment.flywheel.dev/llama2-70b condition met"
    assert ok(env, "get", "md", "llama2-70b", "--no-headers").split()[1] == "True"


# --------------------------------------------------------------------------------------------------
# Changing objects


def test_patch_merge(env: dict[str, str]) -> None:
    out = ok(env, "patch", "md", "llama2-70b", "--type=merge", "-p", '{"spec":{"energyPolicy":"Efficient"}}')
    assert out.strip() == "modeldeployment.flywheel.dev/llama2-70b patched"
    assert jsonpath(env, "md", "llama2-70b", "{.spec.energyPolicy}") == "Efficient"
    assert jsonpath(env, "md", "llama2-70b", "{.metadata.generation}") == "2"


def test_patch_json(env: dict[str, str]) -> None:
    patch = '[{"op":"replace","path":"/spec/scaling/maxInstances","value":12}]'
    assert "patched" in ok(env, "patch", "md", "llama2-70b", "--type=json", "-p", patch)
    assert jsonpath(env, "md", "llama2-70b", "{.spec.scaling.maxInstances}") == "12"


def _pump(stream: Iterator[str], into: queue.Queue[str]) -> None:
    for line in stream:
        into.put(line)


def test_watch_prints_changes_as_table_rows(env: dict[str, str]) -> None:
    watch = subprocess.Popen(
        [str(KUBECTL), "get", "md", "llama2-70b", "--watch", "--output-watch-events", "-o", "wide"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert watch.stdout is not None
    threading.Thread(target=_pump, args=(watch.stdout, lines), daemon=True).start()
    try:
        assert lines.get(timeout=60).split()[:2] == ["EVENT", "NAME"]
        assert lines.get(timeout=60).split()[:2] == ["ADDED", "llama2-70b"]
        ok(env, "patch", "md", "llama2-70b", "--type=merge", "-p", '{"spec":{"energyPolicy":"Performance"}}')
        row = lines.get(timeout=60).split()
        assert row[:2] == ["MODIFIED", "llama2-70b"] and "Performance" in row
    finally:
        watch.terminate()
        watch.wait(timeout=30)
    ok(env, "patch", "md", "llama2-70b", "--type=merge", "-p", '{"spec":{"energyPolicy":"Efficient"}}')


def test_strategic_merge_patch_on_custom_resource_is_415(env: dict[str, str]) -> None:
    err = fails(
        env, "patch", "md", "llama2-70b", "--type=strategic", "-p", '{"spec":{"energyPolicy":"Balanced"}}'
    )
    assert "UnsupportedMediaType" in err or "unknown format" in err


def test_edit_with_scripted_editor(env: dict[str, str], tmp_path: Path) -> None:
    editor = tmp_path / "editor.sh"
    editor.write_text("#!/bin/sh\nsed -i 's/warmStandbys: 1/warmStandbys: 2/' \"$1\"\n")
    editor.chmod(0o755)
    result = kubectl(env, "edit", "md", "llama2-70b", extra={"KUBE_EDITOR": str(editor)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "modeldeployment.flywheel.dev/llama2-70b edited"
    assert jsonpath(env, "md", "llama2-70b", "{.spec.scaling.warmStandbys}") == "2"


def test_diff_changes_nothing(env: dict[str, str]) -> None:
    before = jsonpath(env, "md", "llama2-70b", "{.metadata.resourceVersion}")
    changed = as_yaml(sample(energyPolicy="Performance"))
    result = kubectl(env, "diff", "-f", "-", stdin=changed)
    assert result.returncode == 1, result.stderr  # 1: differences found
    assert "+  energyPolicy: Performance" in result.stdout
    assert jsonpath(env, "md", "llama2-70b", "{.metadata.resourceVersion}") == before
    assert jsonpath(env, "md", "llama2-70b", "{.spec.energyPolicy}") == "Efficient"


def test_apply_dry_run_server_changes_nothing(env: dict[str, str]) -> None:
    before = jsonpath(env, "md", "llama2-70b", "{.metadata.resourceVersion}")
    out = ok(env, "apply", "--dry-run=server", "-f", "-", stdin=as_yaml(sample(energyPolicy="Performance")))
    assert out.strip() == "modeldeployment.flywheel.dev/llama2-70b configured (server dry run)"
    out = ok(env, "apply", "--dry-run=server", "-f", "-", stdin=as_yaml(sample("ghost")))
    assert out.strip() == "modeldeployment.flywheel.dev/ghost created (server dry run)"
    assert jsonpath(env, "md", "llama2-70b", "{.metadata.resourceVersion}") == before
    assert "NotFound" in fails(env, "get", "md", "ghost")


def test_delete_dry_run_server_keeps_the_object(env: dict[str, str]) -> None:
    out = ok(env, "delete", "md", "llama2-70b", "--dry-run=server")
    assert out.strip() == (
        'modeldeployment.flywheel.dev "llama2-70b" deleted from default namespace (server dry run)'
    )
    assert (
        ok(env, "get", "md", "llama2-70b", "-o", "name").strip() == "modeldeployment.flywheel.dev/llama2-70b"
    )


def test_server_side_apply_creates(env: dict[str, str]) -> None:
    out = ok(env, "apply", "--server-side", "-f", "-", stdin=as_yaml(sample("ssa")))
    assert out.strip() == "modeldeployment.flywheel.dev/ssa serverside-applied"
    managers = jsonpath(env, "md", "ssa", "{.metadata.managedFields[*].manager}", "--show-managed-fields")
    assert managers == "kubectl"


def test_server_side_apply_updates(env: dict[str, str]) -> None:
    changed = as_yaml(sample("ssa", energyPolicy="Efficient"))
    assert "serverside-applied" in ok(env, "apply", "--server-side", "-f", "-", stdin=changed)
    assert jsonpath(env, "md", "ssa", "{.spec.energyPolicy}") == "Efficient"
    assert jsonpath(env, "md", "ssa", "{.metadata.generation}") == "2"


def test_server_side_apply_conflict_then_force(env: dict[str, str]) -> None:
    other = as_yaml(sample("ssa", energyPolicy="Performance"))
    err = fails(env, "apply", "--server-side", "--field-manager=autoscaler", "-f", "-", stdin=other)
    assert "Apply failed with" in err and 'conflict with "kubectl"' in err and ".spec.energyPolicy" in err
    assert jsonpath(env, "md", "ssa", "{.spec.energyPolicy}") == "Efficient"
    args = ("apply", "--server-side", "--field-manager=autoscaler", "--force-conflicts", "-f", "-")
    assert "serverside-applied" in ok(env, *args, stdin=other)
    assert jsonpath(env, "md", "ssa", "{.spec.energyPolicy}") == "Performance"


def test_apply_kustomize(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "md.yaml").write_text(as_yaml(sample("kustomized")))
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [md.yaml]\nnamePrefix: team-a-\ncommonLabels: {team: a}\n"
    )
    out = ok(env, "apply", "-k", str(tmp_path))
    assert out.strip() == "modeldeployment.flywheel.dev/team-a-kustomized created"
    assert jsonpath(env, "md", "team-a-kustomized", "{.metadata.labels.team}") == "a"


def test_explain(env: dict[str, str]) -> None:
    out = ok(env, "explain", "modeldeployment.spec.gpu")
    assert "KIND:       ModelDeployment" in out and "VERSION:    v1alpha1" in out
    assert "clockMinMHz\t<integer>" in out and "allowedTensorParallel\t<[]integer>" in out


def test_api_resources_list_servingpools_and_no_gateway_api_pool_kind(env: dict[str, str]) -> None:
    out = ok(env, "api-resources", "--api-group=flywheel.dev")
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert set(rows) == {
        "gpunodes",
        "gpupools",
        "incidents",
        "modeldeployments",
        "modelinstances",
        "servingpools",
    }
    assert rows["servingpools"][1] == "fwpool,spool" and rows["servingpools"][-1] == "ServingPool"
    assert "inference" + "pool" not in out.lower()  # the Gateway API Inference Extension's kind


# --------------------------------------------------------------------------------------------------
# Built-in kinds and namespaces


def test_get_core_kinds(env: dict[str, str]) -> None:
    out = ok(env, "get", "namespaces")
    assert out.splitlines()[0].split() == ["NAME", "STATUS", "AGE"] and "default   " in out
    assert kubectl(env, "get", "pods").returncode == 0
    assert kubectl(env, "get", "nodes").returncode == 0
    events = ok(env, "get", "events")
    assert "ScaledOut" in events and "modeldeployment/llama2-70b" in events


def test_create_namespace_and_use_it(env: dict[str, str]) -> None:
    assert ok(env, "create", "namespace", "team-b").strip() == "namespace/team-b created"
    assert ok(env, "create", "configmap", "settings", "-n", "team-b", "--from-literal=a=1").strip() == (
        "configmap/settings created"
    )
    assert "Active" in ok(env, "get", "namespace", "team-b")


def test_apply_builtin_twice_replaces_data(env: dict[str, str]) -> None:
    first = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "tuning"},
        "data": {"a": "1", "b": "2"},
    }
    assert ok(env, "apply", "-f", "-", stdin=json.dumps(first)).strip() == "configmap/tuning created"
    second = first | {"data": {"a": "1"}}
    assert ok(env, "apply", "-f", "-", stdin=json.dumps(second)).strip() == "configmap/tuning configured"
    assert jsonpath(env, "configmap", "tuning", "{.data}") == '{"a":"1"}'
    lines = ok(env, "get", "configmap", "tuning").splitlines()
    assert lines[0].split() == ["NAME", "DATA", "AGE"] and lines[1].split()[:2] == ["tuning", "1"]


def test_get_nodes_shows_status(env: dict[str, str]) -> None:
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "gpu-node-0"},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }
    ok(env, "create", "-f", "-", stdin=json.dumps(node))
    assert ok(env, "get", "node", "gpu-node-0", "--no-headers").split()[1] == "NotReady"  # status dropped
    ready = json.dumps({"status": node["status"]})
    ok(env, "patch", "node", "gpu-node-0", "--subresource=status", "--type=merge", "-p", ready)
    ok(env, "cordon", "gpu-node-0")
    lines = ok(env, "get", "nodes").splitlines()
    assert lines[0].split()[:2] == ["NAME", "STATUS"]
    assert lines[1].split()[:2] == ["gpu-node-0", "Ready,SchedulingDisabled"]


def test_auth_can_i(env: dict[str, str]) -> None:
    assert ok(env, "auth", "can-i", "create", "modeldeployments").strip() == "yes"


def test_create_in_missing_namespace_is_refused(env: dict[str, str]) -> None:
    err = fails(
        env,
        "apply",
        "-n",
        "nowhere",
        "-f",
        "-",
        stdin=as_yaml(sample("lost") | {"metadata": {"name": "lost"}}),
    )
    assert 'namespaces "nowhere" not found' in err


def test_delete_namespace_deletes_its_contents(env: dict[str, str]) -> None:
    ok(
        env,
        "apply",
        "-n",
        "team-b",
        "-f",
        "-",
        stdin=as_yaml(sample("in-b") | {"metadata": {"name": "in-b"}}),
    )
    assert ok(env, "delete", "namespace", "team-b").strip() == 'namespace "team-b" deleted'
    assert "NotFound" in fails(env, "get", "namespace", "team-b")
    assert "No resources found" in kubectl(env, "get", "md", "-n", "team-b").stderr


def _owned_configmap(env: dict[str, str], owner: str, name: str) -> None:
    uid = jsonpath(env, "md", owner, "{.metadata.uid}")
    ref = {"apiVersion": "flywheel.dev/v1alpha1", "kind": "ModelDeployment", "name": owner, "uid": uid}
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "ownerReferences": [ref]}}
    ok(env, "apply", "-f", "-", stdin=json.dumps(cm))


def test_delete_cascades_to_dependents(env: dict[str, str]) -> None:
    ok(env, "apply", "-f", "-", stdin=as_yaml(sample("owner-a")))
    _owned_configmap(env, "owner-a", "dependent-a")
    assert ok(env, "delete", "md", "owner-a", "--wait").strip() == (
        'modeldeployment.flywheel.dev "owner-a" deleted from default namespace'
    )
    out = ok(env, "wait", "--for=delete", "configmap/dependent-a", "--timeout=30s")
    assert "condition met" in out or out == ""


def test_delete_orphan_keeps_dependents(env: dict[str, str]) -> None:
    ok(env, "apply", "-f", "-", stdin=as_yaml(sample("owner-b")))
    _owned_configmap(env, "owner-b", "dependent-b")
    ok(env, "delete", "md", "owner-b", "--cascade=orphan")
    assert jsonpath(env, "configmap", "dependent-b", "{.metadata.name}") == "dependent-b"
    assert jsonpath(env, "configmap", "dependent-b", "{.metadata.ownerReferences}") == ""


def test_delete_foreground(env: dict[str, str]) -> None:
    ok(env, "apply", "-f", "-", stdin=as_yaml(sample("owner-c")))
    _owned_configmap(env, "owner-c", "dependent-c")
    ok(env, "delete", "md", "owner-c", "--cascade=foreground")
    assert "NotFound" in fails(env, "get", "configmap", "dependent-c")


def test_cluster_info_and_version(
    env: dict[str, str], cluster: tuple[EmulatorThread, dict[str, str]]
) -> None:
    assert f"Kubernetes control plane is running at {cluster[0].url}" in ok(env, "cluster-info")
    version = json.loads(ok(env, "version", "-o", "json"))
    assert version["serverVersion"]["minor"] == "37" and version["clientVersion"]["minor"] == "37"


# --------------------------------------------------------------------------------------------------
# The server refuses invalid ModelDeployments with the CRD's schema and CEL messages

INVALID: list[tuple[str, dict[str, Any], str]] = [
    (
        "cel-scaling",
        {"scaling": {"minInstances": 5, "maxInstances": 2}},
        "scaling.minInstances must be less than or equal to scaling.maxInstances",
    ),
    (
        "cel-clocks",
        {"gpu": {"clockMinMHz": 1500, "clockMaxMHz": 900}},
        "gpu.clockMinMHz must be less than or equal to gpu.clockMaxMHz",
    ),
    (
        "cel-input-thresholds",
        {"requestClasses": {"mode": "Auto", "inputThresholdsTokens": [900, 100]}},
        "requestClasses.inputThresholdsTokens must be strictly increasing",
    ),
    (
        "cel-output-thresholds",
        {"requestClasses": {"mode": "Auto", "outputThresholdsTokens": [64, 64]}},
        "requestClasses.outputThresholdsTokens must be strictly increasing",
    ),
    (
        "cel-explicit-empty",
        {"requestClasses": {"mode": "Explicit"}},
        "requestClasses.classes must list at least one class when mode",
    ),
    (
        "cel-auto-with-classes",
        {
            "requestClasses": {
                "mode": "Auto",
                "classes": [{"name": "a", "maxInputTokens": 10, "maxOutputTokens": 10}],
            }
        },
        "requestClasses.classes must be empty when mode is Auto",
    ),
    (
        "cel-perclass-auto",
        {"slo": {"perClass": {"huge": {"ttftP99Ms": 10, "tbtP99Ms": 10}}}},
        "slo.perClass keys must be request class names",
    ),
    (
        "cel-perclass-explicit",
        {
            "requestClasses": {
                "mode": "Explicit",
                "classes": [{"name": "a", "maxInputTokens": 10, "maxOutputTokens": 10}],
            },
            "slo": {"perClass": {"b": {"ttftP99Ms": 10, "tbtP99Ms": 10}}},
        },
        "slo.perClass keys must name a class listed in requestClasses.classes",
    ),
    ("enum-policy", {"energyPolicy": "Greedy"}, 'spec.energyPolicy: Unsupported value: "Greedy"'),
    ("enum-engine", {"engine": {"kind": "tgi"}}, 'spec.engine.kind: Unsupported value: "tgi"'),
    (
        "enum-tp",
        {"gpu": {"allowedTensorParallel": [3]}},
        "spec.gpu.allowedTensorParallel[0]: Unsupported value: 3",
    ),
    (
        "max-ttft",
        {"slo": {"ttftP99Ms": 700000}},
        "spec.slo.ttftP99Ms: Invalid value: 700000: "
        "spec.slo.ttftP99Ms in body should be less than or equal to 600000",
    ),
    (
        "min-hang",
        {"faultTolerance": {"hangTimeoutSeconds": 0}},
        "spec.faultTolerance.hangTimeoutSeconds in body should be greater than or equal to 1",
    ),
    (
        "max-unavailable",
        {"faultTolerance": {"maxUnavailablePercent": 101}},
        "spec.faultTolerance.maxUnavailablePercent in body should be less than or equal to 100",
    ),
    (
        "pattern-weights",
        {"model": {"name": "m", "parametersMillions": 7000, "weightSource": "ftp://x"}},
        "model.weightSource must be hf://",
    ),
    (
        "type-params",
        {"model": {"name": "m", "parametersMillions": "big", "weightSource": "hf://m"}},
        "spec.model.parametersMillions in body must be of type integer",
    ),
    ("required-model", {"model": None}, "spec.model: Required value"),
    (
        "too-many-tp",
        {"gpu": {"allowedTensorParallel": [1, 2, 4, 8, 8]}},
        "spec.gpu.allowedTensorParallel: Too many: 5: must have at most 4 items",
    ),
    ("unknown-field", {"fooBar": 1}, 'strict decoding error: unknown field "spec.fooBar"'),
]


@pytest.mark.parametrize(("name", "spec", "message"), INVALID, ids=[i[0] for i in INVALID])
def test_invalid_modeldeployment_is_refused(
    env: dict[str, str], name: str, spec: dict[str, Any], message: str
) -> None:
    doc = sample(f"bad-{name}")
    for key, value in spec.items():
        if value is None:
            del doc["spec"][key]
        elif isinstance(value, dict) and isinstance(doc["spec"].get(key), dict):
            doc["spec"][key] = doc["spec"][key] | value
        else:
            doc["spec"][key] = value
    err = fails(env, "apply", "-f", "-", stdin=as_yaml(doc))
    assert message in err
    assert "NotFound" in fails(env, "get", "md", f"bad-{name}")


def test_replace_of_a_stale_object_conflicts(env: dict[str, str]) -> None:
    stale = json.loads(ok(env, "get", "md", "llama2-70b", "-o", "json"))
    ok(env, "label", "md", "llama2-70b", "replaced=no")
    assert "the object has been modified" in fails(env, "replace", "-f", "-", stdin=json.dumps(stale))
    fresh = json.loads(ok(env, "get", "md", "llama2-70b", "-o", "json"))
    fresh["metadata"]["labels"]["replaced"] = "yes"
    assert ok(env, "replace", "-f", "-", stdin=json.dumps(fresh)).strip().endswith("replaced")


def test_immutable_model_name_is_refused(env: dict[str, str]) -> None:
    patch = '{"spec":{"model":{"name":"another/model"}}}'
    err = fails(env, "patch", "md", "llama2-70b", "--type=merge", "-p", patch)
    assert 'The ModelDeployment "llama2-70b" is invalid: spec.model.name: Invalid value: "string"' in err
    assert "model.name is immutable" in err
    assert jsonpath(env, "md", "llama2-70b", "{.spec.model.name}") == "meta-llama/Llama-2-70b-chat-hf"


def test_delete_crds_stops_serving_their_kinds(env: dict[str, str], tmp_path: Path) -> None:
    out = ok(env, "delete", "-f", str(REPO / "crds"))
    assert out.count("deleted") == 6
    fresh_discovery = ("get", "md", "--cache-dir", str(tmp_path / "cache"))
    assert "the server doesn't have a resource type" in fails(env, *fresh_discovery)
