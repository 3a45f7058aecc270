"""Applies a ModelDeployment's router objects (``controllers.router_objects``): create when absent,
merge-patch when the desired object changed (a hash of it, in an annotation, tells)."""

from __future__ import annotations

import hashlib
import json

from flywheel.controllers.resources.router_objects import ModelFiles, router_objects
from flywheel.engines.adapters import model_location
from flywheel.kubeclient import Kind, KubeClient, Obj, owner_reference

SPEC_HASH = "flywheel.dev/router-spec-hash"
KINDS: dict[str, Kind] = {
    "ServiceAccount": Kind("", "v1", "serviceaccounts", "ServiceAccount"),
    "Deployment": Kind("apps", "v1", "deployments", "Deployment"),
    "Service": Kind("", "v1", "services", "Service"),
    "PodDisruptionBudget": Kind("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget"),
}


def _hashed(obj: Obj) -> Obj:
    digest = hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]
    meta = obj["metadata"]
    return {**obj, "metadata": {**meta, "annotations": {**meta.get("annotations", {}), SPEC_HASH: digest}}}


def model_files(md: Obj) -> ModelFiles | None:
    """The volume the engines read the weights from, when there is one the router can mount too (not
    a per-Pod download cache, not object storage)."""
    source = (((md.get("spec") or {}).get("model")) or {}).get("weightSource", "")
    try:
        location = model_location(source)
    except ValueError:
        return None
    if location.volume is None or location.mount is None or "emptyDir" in location.volume:
        return None
    return ModelFiles(location.volume, location.mount, location.model_arg)


async def apply_router(kube: KubeClient, md: Obj, image: str) -> list[str]:
    """Bring the deployment's router objects to their desired state; the kinds created or patched."""
    meta = md["metadata"]
    owner = owner_reference(md)
    objects = router_objects(meta["name"], meta["namespace"], owner, image, model_files=model_files(md))
    return await apply_objects(kube, meta["namespace"], objects)


async def apply_objects(kube: KubeClient, namespace: str, objects: list[Obj]) -> list[str]:
    """Create each object when absent, merge-patch it when its desired form changed; the kinds
    created or patched (a pooled GPU group's router uses it too)."""
    changed: list[str] = []
    for desired in objects:
        obj = _hashed(desired)
        kind = KINDS[obj["kind"]]
        name = obj["metadata"]["name"]
        current = await kube.get(kind, namespace, name)
        if current is None:
            if await kube.create(kind, namespace, obj) is not None:
                changed.append(obj["kind"])
            continue
        have = ((current.get("metadata") or {}).get("annotations") or {}).get(SPEC_HASH)
        if have != obj["metadata"]["annotations"][SPEC_HASH]:
            patch = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}
            await kube.patch(kind, namespace, name, patch)
            changed.append(obj["kind"])
    return changed
