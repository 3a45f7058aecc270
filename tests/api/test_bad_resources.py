"""Realistic user mistakes: each is rejected by the CRD (schema + CEL) AND by the pydantic model,
and both messages name the offending field."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from crdschema import REPO, Error, load_crds, validate
from pydantic import ValidationError

from flywheel.api.v1alpha1 import KINDS, ModelDeployment, Resource

CRDS = load_crds()
MODELS: dict[str, type[Resource]] = {k.KIND: k for k in KINDS}
DELETE = object()


def _sample(kind: str) -> dict[str, Any]:
    path = REPO / "manifests" / "samples" / f"{kind.lower()}.yaml"
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict)
    return document


@dataclass(frozen=True)
class Mistake:
    id: str
    kind: str
    edits: dict[str, Any]
    field: str
    """Dotted field the messages must name (list indices ignored)."""
    update: bool = False
    """Apply ``edits`` as an update of the sample rather than a create."""

    def document(self) -> dict[str, Any]:
        document = copy.deepcopy(_sample(self.kind))
        for dotted, value in self.edits.items():
            *parents, leaf = dotted.split(".")
            node = document
            for name in parents:
                node = node.setdefault(name, {})
            if value is DELETE:
                node.pop(leaf, None)
            else:
                node[leaf] = value
        return document


MISTAKES = [
    Mistake("clock-min-above-max", "ModelDeployment", {"spec.gpu.clockMinMHz": 2000}, "gpu.clockMinMHz"),
    Mistake(
        "tensor-parallel-3",
        "ModelDeployment",
        {"spec.gpu.allowedTensorParallel": [2, 3]},
        "allowedTensorParallel",
    ),
    Mistake(
        "tensor-parallel-16",
        "ModelDeployment",
        {"spec.gpu.allowedTensorParallel": [8, 16]},
        "allowedTensorParallel",
    ),
    Mistake(
        "tensor-parallel-repeated",
        "ModelDeployment",
        {"spec.gpu.allowedTensorParallel": [4, 4]},
        "allowedTensorParallel",
    ),
    Mistake(
        "tensor-parallel-empty",
        "ModelDeployment",
        {"spec.gpu.allowedTensorParallel": []},
        "allowedTensorParallel",
    ),
    Mistake(
        "min-instances-above-max",
        "ModelDeployment",
        {"spec.scaling.minInstances": 10, "spec.scaling.maxInstances": 4},
        "scaling.minInstances",
    ),
    Mistake("negative-min-instances", "ModelDeployment", {"spec.scaling.minInstances": -1}, "minInstances"),
    Mistake(
        "negative-expected-peak",
        "ModelDeployment",
        {"spec.expectedLoad.peakRequestsPerSecond": -1},
        "expectedLoad.peakRequestsPerSecond",
    ),
    Mistake(
        "zero-expected-prompt",
        "ModelDeployment",
        {"spec.expectedLoad.meanPromptTokens": 0},
        "expectedLoad.meanPromptTokens",
    ),
    Mistake("zero-ttft-slo", "ModelDeployment", {"spec.slo.ttftP99Ms": 0}, "slo.ttftP99Ms"),
    Mistake("negative-tbt-slo", "ModelDeployment", {"spec.slo.tbtP99Ms": -50}, "slo.tbtP99Ms"),
    Mistake(
        "zero-per-class-slo",
        "ModelDeployment",
        {"spec.slo.perClass": {"ll": {"ttftP99Ms": 0, "tbtP99Ms": 150}}},
        "perClass.ll.ttftP99Ms",
    ),
    Mistake(
        "explicit-mode-without-classes",
        "ModelDeployment",
        {"spec.requestClasses.mode": "Explicit", "spec.slo.perClass": {}},
        "requestClasses.classes",
    ),
    Mistake(
        "auto-mode-with-classes",
        "ModelDeployment",
        {"spec.requestClasses.classes": [{"name": "chat", "maxInputTokens": 4096, "maxOutputTokens": 512}]},
        "requestClasses.classes",
    ),
    Mistake(
        "input-thresholds-not-increasing",
        "ModelDeployment",
        {"spec.requestClasses.inputThresholdsTokens": [2048, 512]},
        "inputThresholdsTokens",
    ),
    Mistake(
        "output-thresholds-equal",
        "ModelDeployment",
        {"spec.requestClasses.outputThresholdsTokens": [256, 256]},
        "outputThresholdsTokens",
    ),
    Mistake(
        "three-thresholds",
        "ModelDeployment",
        {"spec.requestClasses.inputThresholdsTokens": [128, 512, 2048]},
        "inputThresholdsTokens",
    ),
    Mistake(
        "explicit-class-name-repeated",
        "ModelDeployment",
        {
            "spec.requestClasses.mode": "Explicit",
            "spec.slo.perClass": {},
            "spec.requestClasses.classes": [
                {"name": "chat", "maxInputTokens": 4096, "maxOutputTokens": 512},
                {"name": "chat", "maxInputTokens": 8192, "maxOutputTokens": 512},
            ],
        },
        "requestClasses.classes",
    ),
    Mistake(
        "explicit-class-name-uppercase",
        "ModelDeployment",
        {
            "spec.requestClasses.mode": "Explicit",
            "spec.slo.perClass": {},
            "spec.requestClasses.classes": [{"name": "Chat", "maxInputTokens": 4096, "maxOutputTokens": 512}],
        },
        "requestClasses.classes.name",
    ),
    Mistake("unknown-engine", "ModelDeployment", {"spec.engine.kind": "tensorrt-llm"}, "engine.kind"),
    Mistake("engine-port-out-of-range", "ModelDeployment", {"spec.engine.port": 80800}, "engine.port"),
    Mistake("unknown-dtype", "ModelDeployment", {"spec.model.dtype": "fp4"}, "model.dtype"),
    Mistake(
        "weight-source-http",
        "ModelDeployment",
        {"spec.model.weightSource": "https://huggingface.co/meta-llama/Llama-2-70b-chat-hf"},
        "model.weightSource",
    ),
    Mistake(
        "weight-source-missing", "ModelDeployment", {"spec.model.weightSource": DELETE}, "model.weightSource"
    ),
    Mistake("typo-in-field-name", "ModelDeployment", {"spec.scaling.maxInstance": 16}, "scaling.maxInstance"),
    Mistake("snake-case-field-name", "ModelDeployment", {"spec.energy_policy": "Efficient"}, "energy_policy"),
    Mistake("unknown-energy-policy", "ModelDeployment", {"spec.energyPolicy": "Green"}, "energyPolicy"),
    Mistake(
        "quoted-number",
        "ModelDeployment",
        {"spec.scaling.maxInstances": "16"},
        "scaling.maxInstances",
    ),
    Mistake(
        "per-class-key-not-an-auto-class",
        "ModelDeployment",
        {"spec.slo.perClass": {"long": {"ttftP99Ms": 4000, "tbtP99Ms": 150}}},
        "slo.perClass",
    ),
    Mistake(
        "per-class-key-not-an-explicit-class",
        "ModelDeployment",
        {
            "spec.requestClasses.mode": "Explicit",
            "spec.requestClasses.classes": [{"name": "chat", "maxInputTokens": 4096, "maxOutputTokens": 512}],
        },
        "slo.perClass",
    ),
    Mistake(
        "max-unavailable-over-100",
        "ModelDeployment",
        {"spec.faultTolerance.maxUnavailablePercent": 150},
        "maxUnavailablePercent",
    ),
    Mistake(
        "model-name-changed-on-update",
        "ModelDeployment",
        {"spec.model.name": "meta-llama/Llama-3.1-70B-Instruct"},
        "model.name",
        update=True,
    ),
    Mistake("pool-tensor-parallel-3", "ServingPool", {"spec.tensorParallel": 3}, "tensorParallel"),
    Mistake("pool-clock-min-above-max", "ServingPool", {"spec.clockMinMHz": 1990}, "clockMinMHz"),
    Mistake(
        "pool-deployment-not-a-dns-name",
        "ServingPool",
        {"spec.modelDeployment": "Llama2_70B"},
        "modelDeployment",
    ),
    Mistake(
        "gpu-uuids-count-differs-from-tp",
        "ModelInstance",
        {"spec.gpuUUIDs": ["GPU-a", "GPU-b"]},
        "gpuUUIDs",
    ),
    Mistake(
        "gpu-uuids-repeated",
        "ModelInstance",
        {"spec.gpuUUIDs": ["GPU-a", "GPU-a", "GPU-b", "GPU-c"]},
        "gpuUUIDs",
    ),
    Mistake("gpu-uuids-without-node", "ModelInstance", {"spec.nodeName": DELETE}, "nodeName"),
    Mistake(
        "instance-clock-min-above-max",
        "ModelInstance",
        {"spec.clockPolicy.minMHz": 2500},
        "clockPolicy.minMHz",
    ),
    Mistake("instance-unknown-role", "ModelInstance", {"spec.role": "Spare"}, "role"),
    Mistake("quarantine-node-without-reason", "GPUNode", {"spec.quarantineNode": True}, "quarantineReason"),
    Mistake(
        "quarantined-gpu-listed-twice",
        "GPUNode",
        {
            "spec.quarantinedGPUs": [
                {"uuid": "GPU-a", "reason": "XID 79"},
                {"uuid": "GPU-a", "reason": "XID 48"},
            ]
        },
        "quarantinedGPUs",
    ),
    Mistake("quarantine-as-string", "GPUNode", {"spec.quarantineNode": "yes"}, "quarantineNode"),
    Mistake("diagnostics-unknown-level", "GPUNode", {"spec.diagnostics.level": "Full"}, "diagnostics.level"),
    Mistake("incident-unknown-signal", "Incident", {"spec.signal.type": "Xid79"}, "signal.type"),
    Mistake("incident-negative-xid", "Incident", {"spec.signal.xid": -1}, "signal.xid"),
    Mistake("pooled-without-pool", "ModelDeployment", {"spec.sharing": {"mode": "Pooled"}}, "sharing.pool"),
    Mistake(
        "dedicated-with-pool",
        "ModelDeployment",
        {"spec.sharing": {"mode": "Dedicated", "pool": "small-models"}},
        "sharing.pool",
    ),
    Mistake("unknown-sharing-mode", "ModelDeployment", {"spec.sharing": {"mode": "Shared"}}, "sharing.mode"),
    Mistake("gpupool-gpus-not-multiple", "GPUPool", {"spec.groupSize": 4, "spec.gpus": 6}, "gpus"),
    Mistake("gpupool-group-size-3", "GPUPool", {"spec.groupSize": 3}, "groupSize"),
    Mistake("gpupool-zero-models-per-gpu", "GPUPool", {"spec.maxModelsPerGPU": 0}, "maxModelsPerGPU"),
    # Engine Pods: a weight cache is a claim in the namespace, never a node directory a tenant picks.
    Mistake(
        "weight-cache-claim-is-a-host-path",
        "ModelDeployment",
        {"spec.model.weightCache": {"persistentVolumeClaim": "/var/lib/flywheel/weights"}},
        "weightCache.persistentVolumeClaim",
    ),
    Mistake(
        "weight-cache-host-path-field",
        "ModelDeployment",
        {"spec.model.weightCache": {"persistentVolumeClaim": "weights", "hostPath": "/var/lib/x"}},
        "hostPath",
    ),
    Mistake(
        "weight-cache-on-streamed-weights",
        "ModelDeployment",
        {
            "spec.model.weightSource": "s3://bucket/llama",
            "spec.model.weightCache": {"persistentVolumeClaim": "w"},
        },
        "weightCache",
    ),
    Mistake(
        "engine-memory-limit-below-request",
        "ModelDeployment",
        {"spec.engine.resources": {"requests": {"memoryGiB": 64}, "limits": {"memoryGiB": 32}}},
        "resources.limits.memoryGiB",
    ),
    Mistake(
        "engine-cpu-limit-below-request",
        "ModelDeployment",
        {"spec.engine.resources": {"requests": {"cpu": 16}, "limits": {"cpu": 8}}},
        "resources.limits.cpu",
    ),
    Mistake(
        "engine-cpu-millicores",
        "ModelDeployment",
        {"spec.engine.resources": {"requests": {"cpu": "500m"}}},
        "resources.requests.cpu",
    ),
]


def _normalized(path: str) -> str:
    return re.sub(r"\[\d+\]|\.\d+(?=\.|$)", "", path)


def _names(errors: list[Error], wanted: str) -> bool:
    return any(wanted in _normalized(path) or wanted in message for path, message in errors)


def crd_errors(mistake: Mistake) -> list[Error]:
    crd = CRDS[mistake.kind]
    if mistake.update:
        return validate(mistake.document(), crd, old=_sample(mistake.kind))
    return validate(mistake.document(), crd)


def model_errors(mistake: Mistake) -> list[Error]:
    model = MODELS[mistake.kind]
    try:
        parsed = model.from_wire(mistake.document())
    except ValidationError as exc:
        return [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in exc.errors()]
    if mistake.update:
        assert isinstance(parsed, ModelDeployment)
        old = ModelDeployment.from_wire(_sample(mistake.kind))
        return [("spec", m) for m in parsed.spec.update_errors(old.spec)]
    return []


@pytest.mark.parametrize("mistake", MISTAKES, ids=[m.id for m in MISTAKES])
def test_mistake_is_rejected_by_the_crd_naming_the_field(mistake: Mistake) -> None:
    errors = crd_errors(mistake)
    assert errors, "the CRD accepted it"
    assert _names(errors, mistake.field), errors


@pytest.mark.parametrize("mistake", MISTAKES, ids=[m.id for m in MISTAKES])
def test_mistake_is_rejected_by_the_model_naming_the_field(mistake: Mistake) -> None:
    errors = model_errors(mistake)
    assert errors, "the pydantic model accepted it"
    assert _names(errors, mistake.field), errors


def test_samples_themselves_are_accepted_by_both() -> None:
    """The mistakes above are rejections of otherwise valid objects."""
    for kind, crd in CRDS.items():
        assert validate(_sample(kind), crd) == []
        MODELS[kind].from_wire(_sample(kind))


def test_at_least_fifteen_distinct_rejections() -> None:
    rows = []
    for mistake in MISTAKES:
        crd, model = crd_errors(mistake), model_errors(mistake)
        if _names(crd, mistake.field) and _names(model, mistake.field):
            rows.append((mistake.id, crd[0], model[0]))
    print(f"\n{len(rows)} distinct user mistakes rejected by CRD and pydantic, each naming its field:")
    for mistake_id, (path, message), (loc, msg) in rows:
        print(f"  {mistake_id:38} CRD {path}: {message[:70]!r} | pydantic {loc}: {msg[:50]!r}")
    assert len({r[0] for r in rows}) == len(MISTAKES) >= 15
    # Distinct causes, not one error counted many times: each mistake's CRD error differs.
    assert len({r[1] for r in rows}) >= 15
