"""Property: the pydantic model and the generated CRD (schema + CEL) agree on accept/reject.

Specs start from a per-kind generator whose coupled fields sit near their cross-field boundaries
(clockMin vs clockMax, minInstances vs maxInstances, thresholds, perClass keys vs classes, gpuUUIDs vs
tensorParallel, ...), then 0-2 mutations probe single fields with values at and just past their schema
bounds, wrong JSON types, nulls, deletions and unknown fields. The mutation values are read off the CRD
schema, so a bound added to one side only is found.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from crdschema import CRD, accepts, load_crds, validate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from flywheel.api.v1alpha1 import AUTO_CLASS_NAMES, GPUNode, ServingPool, ModelDeployment, ModelInstance
from flywheel.api.v1alpha1.common import Resource

CRDS = load_crds()
DELETE = object()
Draw = Callable[[st.SearchStrategy[Any]], Any]

# --------------------------------------------------------------------------------------------------
# Field probes read off the CRD schema


def _int_values(node: Mapping[str, Any]) -> list[Any]:
    values: list[Any] = [0, -1, 1, "1", True, 1.5]
    for bound in ("minimum", "maximum"):
        if bound in node:
            values += [node[bound] - 1, node[bound], node[bound] + 1]
    return values + [int(v) for v in node.get("enum", [])] + [3, 16]


def _string_values(node: Mapping[str, Any]) -> list[Any]:
    values: list[Any] = ["", "a", "chat", "Chat", "a-", "ab\n", "a_b", 7, False]
    values += [*list(node.get("enum", [])), "bogus"]
    values += [str(v).lower() for v in node.get("enum", [])[:1]]
    if "pattern" in node:
        values += ["hf://org/model", "s3://b/p", "https://x/y", "hf://", "HF://x", "\nhf://x", "oci://r\n"]
    for bound in ("minLength", "maxLength"):
        if bound in node:
            values += ["x" * max(node[bound] - 1, 0), "x" * node[bound], "x" * (node[bound] + 1)]
    return values


def _probe(node: Mapping[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
    """Values at and around the bounds of ``node``, plus wrong types, null and deletion."""
    kind = node.get("type")
    special: list[Any] = [None, DELETE]
    if kind == "integer":
        return st.sampled_from(_int_values(node) + special)
    if kind == "number":
        return st.sampled_from([0.0, -1.0, 0.5, "1", None])
    if kind == "string":
        return st.sampled_from(_string_values(node) + special)
    if kind == "boolean":
        return st.sampled_from([True, False, "true", 0, *special])
    if kind == "array" and depth < 2:
        items = _probe(node["items"], depth + 1).filter(lambda v: v is not DELETE)
        limit = node.get("maxItems", 3) + 1
        at_limit: list[Any] = [[], "x", *special]
        if node["items"].get("type") == "string" and "maxItems" in node:
            # Distinct strings exactly at and one past maxItems (sets stay unique).
            at_limit += [[f"s{i}" for i in range(n)] for n in (node["maxItems"], node["maxItems"] + 1)]
        return st.one_of(
            st.sampled_from(at_limit),
            st.lists(items, min_size=0, max_size=min(limit, 9)),
            items.map(lambda v: [v, v]),
        )
    if kind == "object" and depth < 2:
        values = node.get("additionalProperties")
        if isinstance(values, Mapping):
            keys = st.sampled_from(["ss", "ll", "mm", "chat", "long", "x", ""])
            return st.one_of(
                st.sampled_from([{}, "x", *special]),
                st.dictionaries(
                    keys, _probe(values, depth + 1).filter(lambda v: v is not DELETE), max_size=3
                ),
            )
        return st.sampled_from([{}, {"bogus": 1}, "x", *special])
    return st.sampled_from(special)


def _leaf_paths(node: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    paths: list[tuple[tuple[str, ...], Any]] = [(prefix, node)] if prefix else []
    for name, sub in node.get("properties", {}).items():
        paths += _leaf_paths(sub, (*prefix, name))
    return paths


def _set(spec: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = spec
    for name in path[:-1]:
        child = node.get(name)
        if not isinstance(child, dict):
            child = {}
            node[name] = child
        node = child
    if value is DELETE:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value


def mutated(base: st.SearchStrategy[dict[str, Any]], crd: CRD) -> st.SearchStrategy[dict[str, Any]]:
    """``base`` specs with 0-2 single-field probes (or unknown fields) applied."""
    probes = st.sampled_from([(p, _probe(n)) for p, n in _leaf_paths(crd.schema["properties"]["spec"])])
    unknown_names = st.sampled_from(["bogus", "maxInstance", "clock_min_mhz"])

    @st.composite
    def build(draw: Draw) -> dict[str, Any]:
        spec: dict[str, Any] = draw(base)
        for _ in range(draw(MUTATIONS)):
            path, probe = draw(probes)
            if draw(ONE_IN_TEN):
                _set(spec, (*path[:-1], draw(unknown_names)), 1)
            else:
                _set(spec, path, draw(probe))
        return spec

    strategy: st.SearchStrategy[dict[str, Any]] = build()
    return strategy


MUTATIONS = st.integers(0, 2)
ONE_IN_TEN = st.integers(0, 9).map(lambda n: n == 0)

# --------------------------------------------------------------------------------------------------
# Base specs near cross-field boundaries

MAYBE = st.booleans()
CLOCKS = st.sampled_from([100, 1410, 1500, 1501, 3000])
MAX_CLOCKS = st.sampled_from([100, 1410, 1500, 1501, 1980, 3000])
DNS_NAMES = st.sampled_from(["llama", "chat", "a", "x" * 20])
CLASS_NAMES = ["chat", "batch", "ss", "ll"]
UUIDS = ["GPU-0", "GPU-1", "GPU-2", "GPU-3", "GPU-4", "GPU-5", "GPU-6", "GPU-7"]
DEGREE = st.sampled_from([1, 2, 4, 8])
DEGREES = st.lists(DEGREE, min_size=1, max_size=4)
NODE_NAMES = st.sampled_from(["gpu-node-1", "n"])
MODELS = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["meta-llama/Llama-2-70b-chat-hf", "m", "x" * 253]),
        "parametersMillions": st.sampled_from([1, 7000, 70_000, 10_000_000]),
        "weightSource": st.sampled_from(["hf://meta-llama/Llama-2-70b", "pvc://weights/llama"]),
    }
)
MIN_INSTANCES = st.sampled_from([0, 1, 8, 9])
MAX_INSTANCES = st.sampled_from([1, 8, 10_000])
MODES = st.sampled_from(["Auto", "Explicit"])
THRESHOLDS = st.lists(st.sampled_from([1, 2, 512, 2048]), min_size=2, max_size=2)
CLASSES = st.lists(
    st.fixed_dictionaries(
        {
            "name": st.sampled_from(CLASS_NAMES),
            "maxInputTokens": st.sampled_from([1, 4096]),
            "maxOutputTokens": st.sampled_from([1, 512]),
        }
    ),
    max_size=3,
)
TTFTS = st.sampled_from([1, 1000, 600_000])
PER_CLASS = st.dictionaries(
    st.sampled_from([*CLASS_NAMES, *AUTO_CLASS_NAMES[:3]]),
    st.fixed_dictionaries({"ttftP99Ms": TTFTS, "tbtP99Ms": st.sampled_from([1, 50, 60_000])}),
    max_size=3,
)
POLICIES = st.sampled_from(["Performance", "Balanced", "Efficient"])
POOL_CLASSES = st.sampled_from(CLASS_NAMES).map(lambda name: {"name": name})
INSTANCES = st.sampled_from([0, 1, 10_000])
GPU_UUIDS = st.lists(st.sampled_from(UUIDS), max_size=8)
REASONS = st.sampled_from(["XID 79", "x"])
QUARANTINES = st.lists(
    st.fixed_dictionaries({"uuid": st.sampled_from(UUIDS[:3]), "reason": st.just("XID 48")}), max_size=3
)
DIAGNOSTICS = st.just({"id": "d1"})


def _maybe(draw: Draw, spec: dict[str, Any], key: str, strategy: st.SearchStrategy[Any]) -> None:
    if draw(MAYBE):
        spec[key] = draw(strategy)


@st.composite
def model_deployment_specs(draw: Draw) -> dict[str, Any]:
    spec: dict[str, Any] = {"model": draw(MODELS)}
    gpu: dict[str, Any] = {}
    _maybe(draw, gpu, "clockMinMHz", CLOCKS)
    _maybe(draw, gpu, "clockMaxMHz", MAX_CLOCKS)
    _maybe(draw, gpu, "allowedTensorParallel", DEGREES)
    if draw(MAYBE):
        spec["gpu"] = gpu
    scaling: dict[str, Any] = {}
    _maybe(draw, scaling, "minInstances", MIN_INSTANCES)
    _maybe(draw, scaling, "maxInstances", MAX_INSTANCES)
    if draw(MAYBE):
        spec["scaling"] = scaling
    classes: dict[str, Any] = {}
    _maybe(draw, classes, "mode", MODES)
    _maybe(draw, classes, "inputThresholdsTokens", THRESHOLDS)
    _maybe(draw, classes, "outputThresholdsTokens", THRESHOLDS)
    _maybe(draw, classes, "classes", CLASSES)
    if draw(MAYBE):
        spec["requestClasses"] = classes
    slo: dict[str, Any] = {}
    _maybe(draw, slo, "ttftP99Ms", TTFTS)
    _maybe(draw, slo, "perClass", PER_CLASS)
    if draw(MAYBE):
        spec["slo"] = slo
    _maybe(draw, spec, "energyPolicy", POLICIES)
    return spec


@st.composite
def serving_pool_specs(draw: Draw) -> dict[str, Any]:
    spec: dict[str, Any] = {"modelDeployment": draw(DNS_NAMES), "requestClass": draw(POOL_CLASSES)}
    _maybe(draw, spec, "clockMinMHz", CLOCKS)
    _maybe(draw, spec, "clockMaxMHz", MAX_CLOCKS)
    _maybe(draw, spec, "tensorParallel", DEGREE)
    _maybe(draw, spec, "instances", INSTANCES)
    return spec


@st.composite
def model_instance_specs(draw: Draw) -> dict[str, Any]:
    spec: dict[str, Any] = {"modelDeployment": draw(DNS_NAMES), "pool": draw(DNS_NAMES)}
    _maybe(draw, spec, "tensorParallel", DEGREE)
    _maybe(draw, spec, "nodeName", NODE_NAMES)
    _maybe(draw, spec, "gpuUUIDs", GPU_UUIDS)
    clock: dict[str, Any] = {}
    _maybe(draw, clock, "minMHz", CLOCKS)
    _maybe(draw, clock, "maxMHz", CLOCKS)
    if draw(MAYBE):
        spec["clockPolicy"] = clock
    return spec


@st.composite
def gpu_node_specs(draw: Draw) -> dict[str, Any]:
    spec: dict[str, Any] = {"nodeName": draw(NODE_NAMES)}
    _maybe(draw, spec, "quarantineNode", MAYBE)
    _maybe(draw, spec, "quarantineReason", REASONS)
    _maybe(draw, spec, "quarantinedGPUs", QUARANTINES)
    _maybe(draw, spec, "diagnostics", DIAGNOSTICS)
    return spec


# --------------------------------------------------------------------------------------------------
# The property


def _wrap(model: type[Resource], spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "flywheel.dev/v1alpha1",
        "kind": model.KIND,
        "metadata": {"name": "x"},
        "spec": spec,
    }


def _model_errors(model: type[Resource], body: dict[str, Any]) -> list[str]:
    try:
        model.from_wire(body)
    except ValidationError as exc:
        return [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
    return []


def _check_agreement(
    model: type[Resource], base: st.SearchStrategy[dict[str, Any]], examples: int, crd: CRD | None = None
) -> Counter[str]:
    tally: Counter[str] = Counter()
    crd = crd or CRDS[model.KIND]

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(spec=mutated(base, crd))
    def agree(spec: dict[str, Any]) -> None:
        body = _wrap(model, spec)
        crd_accepts = accepts(body, crd)
        model_errors = _model_errors(model, body)
        if crd_accepts == (not model_errors):
            tally["accepted" if crd_accepts else "rejected"] += 1
            return
        raise AssertionError(
            f"disagreement on {spec!r}\n  CRD: {validate(body, crd)}\n  pydantic: {model_errors}"
        )

    agree()
    return tally


CASES = [
    (ModelDeployment, model_deployment_specs(), 2000),
    (ServingPool, serving_pool_specs(), 300),
    (ModelInstance, model_instance_specs(), 300),
    (GPUNode, gpu_node_specs(), 300),
]


@pytest.mark.parametrize(("model", "base", "examples"), CASES, ids=[c[0].KIND for c in CASES])
def test_pydantic_and_crd_agree(
    model: type[Resource], base: st.SearchStrategy[dict[str, Any]], examples: int
) -> None:
    tally = _check_agreement(model, base, examples)
    print(f"\n{model.KIND}: {dict(tally)}")
    assert tally["accepted"] + tally["rejected"] >= examples
    # Both verdicts are well represented, so agreement is not trivially "everything rejected".
    assert tally["accepted"] >= examples // 10
    assert tally["rejected"] >= examples // 10


def test_property_finds_a_rule_missing_from_the_crd() -> None:
    """The property can fail: drop the CRD's clock CEL rule and a disagreement is found."""
    document = copy.deepcopy(CRDS["ServingPool"].document)
    spec = document["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    del spec["x-kubernetes-validations"]
    with pytest.raises(AssertionError, match="disagreement"):
        _check_agreement(ServingPool, serving_pool_specs(), 300, CRD(document))
