"""Engine Pods: image, TP args, port, probes, shared memory, weights, drain grace period."""

from __future__ import annotations

import pytest

from flywheel.api.v1alpha1 import DType, EngineKind, ModelDeployment, ModelInstance
from flywheel.engines.adapters import GPU_RESOURCE, EngineLaunch, adapter_for, model_location


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
    from flywheel.engines.adapters import SPEC_HASH, instance_pod

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
