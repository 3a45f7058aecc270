"""Engine Pods: image, TP args, port, probes, shared memory, weights, drain grace period, host
resources, RuntimeClass, weight cache (validated against the Kubernetes 1.37 Pod schema)."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from pydantic import ValidationError

from flywheel.api.v1alpha1 import DType, EngineKind, ModelDeployment, ModelInstance
from flywheel.engines.adapters import (
    GPU_RESOURCE,
    SPEC_HASH,
    EngineLaunch,
    HostResources,
    adapter_for,
    instance_pod,
    model_host_resources,
    model_location,
    weight_cache_host_root,
)

K8S_VERSION = "1.37"  # as tests/api/crdschema.py


def _objects(
    kind: str = "vllm", weights: str = "hf://meta-llama/Llama-3.1-70B-Instruct"
) -> tuple[ModelDeployment, ModelInstance]:
    deployment = ModelDeployment.model_validate(
        {
            "metadata": {"name": "llama", "namespace": "serving"},
            "spec": {
                "model": {"name": "llama-70b", "parametersMillions": 70000, "weightSource": weights},
                "engine": {"kind": kind, "extraArgs": ["--max-num-seqs", "128"]},
            },
        }
    )
    instance = ModelInstance.model_validate(
        {
            "metadata": {"name": "llama-mm-0", "namespace": "serving"},
            "spec": {
                "modelDeployment": "llama",
                "pool": "llama-mm",
                "tensorParallel": 4,
                "nodeName": "gpu-node-1",
                "gpuUUIDs": ["GPU-a", "GPU-b", "GPU-c", "GPU-d"],
                "engine": {"kind": kind, "port": 8000},
            },
        }
    )
    return deployment, instance


def _arg(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_vllm_pod_carries_tp_degree_port_probes_and_shared_memory() -> None:
    deployment, instance = _objects()
    adapter = adapter_for(EngineKind.VLLM)
    pod = adapter.pod(
        EngineLaunch.for_instance(deployment, instance), owner={"kind": "ModelInstance", "name": "x"}
    )
    container = pod["spec"]["containers"][0]
    assert container["image"].startswith("vllm/vllm-openai:")
    assert container["command"] == ["vllm", "serve"]
    args = container["args"]
    assert _arg(args, "--tensor-parallel-size") == "4"
    assert _arg(args, "--model") == "meta-llama/Llama-3.1-70B-Instruct"
    assert _arg(args, "--served-model-name") == "llama-70b"
    assert _arg(args, "--port") == "8000"
    assert _arg(args, "--dtype") == "bfloat16"
    assert args[-2:] == ["--max-num-seqs", "128"]  # user's extra args come last and win
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert container["resources"]["limits"] == {GPU_RESOURCE: "4"}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    # Weight loading may take many minutes: the startup probe allows it before liveness applies.
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 1800
    shm = next(v for v in pod["spec"]["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert pod["spec"]["nodeName"] == "gpu-node-1"
    assert pod["metadata"]["labels"]["flywheel.dev/pool"] == "llama-mm"
    assert pod["metadata"]["ownerReferences"] == [{"kind": "ModelInstance", "name": "x"}]
    assert (
        pod["spec"]["terminationGracePeriodSeconds"] > container["lifecycle"]["preStop"]["sleep"]["seconds"]
    )


def test_sglang_pod_uses_its_own_flags() -> None:
    deployment, instance = _objects("sglang")
    pod = adapter_for("sglang").pod(EngineLaunch.for_instance(deployment, instance))
    container = pod["spec"]["containers"][0]
    args = container["args"]
    assert container["command"] == ["python3", "-m", "sglang.launch_server"]
    assert _arg(args, "--tp-size") == "4"
    assert _arg(args, "--model-path") == "meta-llama/Llama-3.1-70B-Instruct"
    assert "--enable-metrics" in args  # SGLang serves /metrics only with this flag
    assert "--tensor-parallel-size" not in args


def test_simulated_pod_runs_the_flywheel_engine_module() -> None:
    deployment, instance = _objects("simulated")
    container = adapter_for("simulated").container(EngineLaunch.for_instance(deployment, instance))
    assert container["command"] == ["python", "-m", "flywheel.engines.simulated"]
    assert _arg(container["args"], "--tensor-parallel-size") == "4"


def test_fp8_maps_to_quantization_flag() -> None:
    deployment, instance = _objects()
    launch = EngineLaunch.for_instance(deployment, instance)
    fp8 = EngineLaunch(**{**launch.__dict__, "dtype": DType.FP8})
    args = adapter_for("vllm").container(fp8)["args"]
    assert _arg(args, "--quantization") == "fp8"
    assert "--dtype" not in args


@pytest.mark.parametrize(
    ("source", "model_arg", "volume_key"),
    [
        ("pvc://weights-claim/llama/70b", "/models/llama/70b", "persistentVolumeClaim"),
        ("oci://registry.example/models/llama:70b", "/models/model", "image"),
        ("hf://meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-8B", "emptyDir"),
    ],
)
def test_weight_sources_become_volumes(source: str, model_arg: str, volume_key: str) -> None:
    location = model_location(source)
    assert location.model_arg == model_arg
    assert location.volume is not None and volume_key in location.volume


def test_s3_weights_stream_without_a_volume() -> None:
    deployment, instance = _objects(weights="s3://bucket/llama-70b")
    args = adapter_for("vllm").container(EngineLaunch.for_instance(deployment, instance))["args"]
    assert _arg(args, "--model") == "s3://bucket/llama-70b"
    assert _arg(args, "--load-format") == "runai_streamer"


def test_unknown_engine_kind_and_weight_scheme_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown engine kind"):
        adapter_for("tgi")
    with pytest.raises(ValueError, match="not supported"):
        model_location("ftp://host/model")


def test_instance_pod_is_what_the_operator_and_the_dev_kubelet_need() -> None:
    from flywheel.controllers.resources.desired import (
        LABEL_DEPLOYMENT,
        LABEL_INSTANCE,
        LABEL_MANAGED_BY,
        MANAGER,
    )

    deployment, instance = _objects("simulated")
    owner = {"kind": "ModelInstance", "name": "llama-mm-0", "uid": "u1"}
    pod = instance_pod("llama-mm-0", "serving", instance.spec, deployment.spec.model, "flywheel:dev", owner)
    labels = pod["metadata"]["labels"]
    assert labels[LABEL_INSTANCE] == "llama-mm-0"
    assert labels[LABEL_DEPLOYMENT] == "llama"
    assert labels[LABEL_MANAGED_BY] == MANAGER
    container = pod["spec"]["containers"][0]
    assert container["image"] == "flywheel:dev"  # the operator's default for the kind
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["FLYWHEEL_GPU_UUIDS"] == "GPU-a,GPU-b,GPU-c,GPU-d"
    assert "NVIDIA_VISIBLE_DEVICES" not in env  # GPU visibility is the device plugin's (CDI) answer
    moved = instance.spec.model_copy(update={"node_name": "gpu-node-2"})
    again = instance_pod("llama-mm-0", "serving", instance.spec, deployment.spec.model, "flywheel:dev", owner)
    other = instance_pod("llama-mm-0", "serving", moved, deployment.spec.model, "flywheel:dev", owner)
    assert pod["metadata"]["annotations"][SPEC_HASH] == again["metadata"]["annotations"][SPEC_HASH]
    assert pod["metadata"]["annotations"][SPEC_HASH] != other["metadata"]["annotations"][SPEC_HASH]


# -- host resources, RuntimeClass, weight cache (issue #17) ----------------------------------------


def _pod(
    kind: str = "vllm",
    engine: dict[str, Any] | None = None,
    model: dict[str, Any] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    deployment, instance = _objects(kind)
    spec = deployment.spec.model_copy(
        update={
            "engine": deployment.spec.engine.model_validate(
                {**deployment.spec.engine.wire(), **(engine or {})}
            ),
            "model": deployment.spec.model.model_validate({**deployment.spec.model.wire(), **(model or {})}),
        }
    )
    return instance_pod(
        "llama-mm-0",
        "serving",
        instance.spec,
        spec.model,
        None,
        {"apiVersion": "flywheel.dev/v1alpha1", "kind": "ModelInstance", "name": "llama-mm-0", "uid": "u1"},
        resources=spec.engine.resources,
        **settings,
    )


def _valid(pod: dict[str, Any]) -> dict[str, Any]:
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    return pod


def test_engine_pod_requests_cpu_and_memory_derived_from_the_model() -> None:
    pod = _valid(_pod())
    resources = pod["spec"]["containers"][0]["resources"]
    # 70B bf16 = 140 GB; a TP4 worker's shard is 35 GB = 32.6 GiB -> 33 GiB + 4 x 4 GiB per worker.
    assert resources["requests"] == {GPU_RESOURCE: "4", "cpu": "10", "memory": "49Gi"}
    assert resources["limits"] == {GPU_RESOURCE: "4"}  # Burstable: no CPU/memory limit unless asked
    assert model_host_resources(70_000 * 10**6 * 2, 8) == HostResources(cpu=18, memory_gib=49)
    assert model_host_resources(1_000 * 10**6 * 2, 1).memory_gib == 16  # the floor
    # The simulated engine loads no weights.
    simulated = _pod("simulated")["spec"]["containers"][0]["resources"]["requests"]
    assert simulated == {GPU_RESOURCE: "4", "cpu": "1", "memory": "1Gi"}


def test_user_resources_override_the_defaults_and_a_lone_limit_caps_the_request() -> None:
    pod = _pod(engine={"resources": {"requests": {"cpu": 32}, "limits": {"cpu": 48, "memoryGiB": 20}}})
    resources = _valid(pod)["spec"]["containers"][0]["resources"]
    assert resources["requests"] == {GPU_RESOURCE: "4", "cpu": "32", "memory": "20Gi"}
    assert resources["limits"] == {GPU_RESOURCE: "4", "cpu": "48", "memory": "20Gi"}
    assert pod["metadata"]["annotations"][SPEC_HASH] != _pod()["metadata"]["annotations"][SPEC_HASH]


def test_runtime_class_is_the_operators_setting() -> None:
    assert "runtimeClassName" not in _pod()["spec"]
    assert _valid(_pod(runtime_class="nvidia"))["spec"]["runtimeClassName"] == "nvidia"
    with pytest.raises(ValueError, match="DNS subdomain"):
        _pod(runtime_class="NVIDIA Runtime")


def _cache(pod: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "hf-cache")
    container = pod["spec"]["containers"][0]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "hf-cache")
    env = {e["name"]: e.get("value") for e in container["env"]}
    return volume, mount, env


def test_weight_cache_claim_replaces_the_per_pod_empty_dir() -> None:
    volume, mount, env = _cache(_valid(_pod()))
    assert volume == {"name": "hf-cache", "emptyDir": {}}
    volume, mount, env = _cache(_valid(_pod(model={"weightCache": {"persistentVolumeClaim": "hf-weights"}})))
    assert volume["persistentVolumeClaim"] == {"claimName": "hf-weights", "readOnly": False}
    assert "readOnly" not in mount and "HF_HUB_OFFLINE" not in env
    # A pre-filled ReadOnlyMany cache: mounted read-only, the hub never tries to download.
    filled = {"weightCache": {"persistentVolumeClaim": "hf-weights", "readOnly": True}}
    volume, mount, env = _cache(_valid(_pod(model=filled)))
    assert volume["persistentVolumeClaim"]["readOnly"] is True
    assert mount["readOnly"] is True and env["HF_HUB_OFFLINE"] == "1"


def test_node_weight_cache_is_the_admins_path_one_directory_per_namespace() -> None:
    volume, _, _ = _cache(_valid(_pod(weight_cache_host_path="/var/lib/flywheel/weights")))
    assert volume["hostPath"] == {"path": "/var/lib/flywheel/weights/serving", "type": "DirectoryOrCreate"}
    # The deployment's own claim wins over the node directory.
    claim = {"weightCache": {"persistentVolumeClaim": "hf-weights"}}
    volume, _, _ = _cache(_pod(model=claim, weight_cache_host_path="/var/lib/flywheel/weights"))
    assert "hostPath" not in volume
    for bad in ("weights", "/", "/var/lib/../etc", "/var//lib"):
        with pytest.raises(ValueError, match="absolute, normalised"):
            weight_cache_host_root(bad)


def test_weight_cache_host_path_cannot_come_from_the_spec() -> None:
    with pytest.raises(ValidationError):
        _pod(model={"weightCache": {"persistentVolumeClaim": "w", "hostPath": "/var/lib/flywheel"}})
    with pytest.raises(ValidationError, match=r"persistentVolumeClaim|persistent_volume_claim"):
        _pod(model={"weightCache": {"persistentVolumeClaim": "/var/lib/flywheel"}})
