"""Run the real operator (kopf) in a thread against the emulator, and small helpers to drive a cluster."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

import httpx

from flywheel.api.v1alpha1 import ModelDeploymentSpec
from flywheel.controllers.energy.brain import GPUInventory, offline_profile
from flywheel.controllers.protocol import (
    SLO,
    ClassWindow,
    ClusterObservation,
    PolicyContext,
    PolicyInfo,
    PoolTarget,
)
from flywheel.models.gpu import SKUS
from flywheel.models.perf import LLAMA2_70B
from flywheel.operator.config import OperatorConfig
from flywheel.operator.main import Operator
from flywheel.operator.runner import build, operate
from waiting import eventually

T = TypeVar("T")
FW = "/apis/flywheel.dev/v1alpha1"
NS = "default"
MDS = f"{FW}/namespaces/{NS}/modeldeployments"
POOLS = f"{FW}/namespaces/{NS}/servingpools"
INSTANCES = f"{FW}/namespaces/{NS}/modelinstances"
PODS = f"/api/v1/namespaces/{NS}/pods"
MERGE = {"Content-Type": "application/merge-patch+json"}


class SpecBrain:
    """A test-only brain (these suites steer pools by spec; test_operator_energy_policy runs the
    real one): one pool per declared class at the largest allowed TP with one instance (``scaling``
    tops the deployment up), no load-driven decisions. ``merge`` (target, source): once the first
    cluster round runs, a deployment with both classes serves ``source`` from ``target``'s pool."""

    name = "spec-test"

    def __init__(self, spec: ModelDeploymentSpec, merge: tuple[str, str] | None = None) -> None:
        self.info = PolicyInfo()
        self.tp = max(spec.gpu.allowed_tensor_parallel)
        self.merge = merge
        self.partition = {c: (c,) for c in spec.class_names()}

    def start(self, context: PolicyContext) -> list[PoolTarget]:
        return [PoolTarget(p, self.tp, 1, 0, "one instance per class") for p in self.partition]

    def observe_classes(self, windows: dict[str, ClassWindow]) -> None:
        pass

    def plan_cluster(self, obs: ClusterObservation) -> list[PoolTarget]:
        if self.merge is None or not set(self.merge) <= set(self.partition):
            return []
        target, source = self.merge
        self.partition[target] = (*self.partition[target], *self.partition.pop(source))
        return [PoolTarget(source, self.tp, 0, 0, f"merged into {target}")]

    def plan_pools(self, obs: ClusterObservation) -> list[PoolTarget]:
        return []

    def react(self, obs: ClusterObservation) -> list[PoolTarget]:
        return []

    def pool_classes(self) -> dict[str, tuple[str, ...]]:
        return dict(self.partition)

    def adopt(self, partition: dict[str, tuple[str, ...]]) -> None:
        self.partition = dict(partition)


def spec_brain(
    merge: tuple[str, str] | None = None,
) -> Callable[[ModelDeploymentSpec, GPUInventory], tuple[SpecBrain, PolicyContext]]:
    def factory(spec: ModelDeploymentSpec, gpus: GPUInventory) -> tuple[SpecBrain, PolicyContext]:
        context = PolicyContext(
            LLAMA2_70B, SKUS["H100-80GB-SXM"], SLO(1000.0, 100.0), gpus.total, gpus.per_node,
            offline_profile(spec),
        )  # fmt: skip
        return SpecBrain(spec, merge), context

    return factory


def operator_config(url: str, **overrides: Any) -> OperatorConfig:
    """Short periods so the suite stays fast."""
    config = OperatorConfig(
        server=url,
        insecure=True,
        standalone=True,
        peering=None,
        identity="op-a",
        pool_period_seconds=0.5,
        cluster_period_seconds=1.0,
        resync_seconds=1.0,
        status_delay_seconds=0.05,
        # No node agent writes engine reports in most suites: a drain ends by its timeout.
        drain_timeout_seconds=1.0,
        watch_server_timeout=20,
        watch_client_timeout=30,
        brain_factory=spec_brain(),  # these tests steer pools by spec; test_operator_energy_policy opts out
    )
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


class OperatorThread:
    """The operator's kopf loop in a background thread; ``stop()`` is graceful, ``kill()`` cancels it."""

    def __init__(self, config: OperatorConfig) -> None:
        self.config = config
        self.registry, self.operator = build(config)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._run, name=f"operator-{config.identity}", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._task = self._loop.create_task(
            operate(self.config, stop_flag=self._stop, ready_flag=self._ready, registry=self.registry)
        )
        try:
            self._loop.run_until_complete(self._task)
        except (asyncio.CancelledError, RuntimeError):
            pass  # killed: the loop was stopped under the operator
        except BaseException as exc:  # surfaced by the tests through .error
            self.error = exc
        finally:
            for _ in range(3):  # let cancellations unwind; whatever still hangs is abandoned, as in a crash
                pending = asyncio.all_tasks(self._loop)
                if not pending:
                    break
                for task in pending:
                    task.cancel()
                with contextlib.suppress(BaseException):
                    self._loop.run_until_complete(asyncio.wait(pending, timeout=1))
            with contextlib.suppress(BaseException):
                self._loop.run_until_complete(self.operator.close())  # the API client's connections
            with contextlib.suppress(BaseException):
                self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()
            # kopf's daemon killer, cancelled at exit, leaves stop_daemon() coroutines it never awaited.
            # Finalised by a random GC pass, their "never awaited" warning can land inside a compile()
            # (another thread's, or pytest's own at the final summary) and trip CPython 3.11.7's AST
            # recursion check ("AST constructor recursion depth mismatch"). Close them here: a closed
            # coroutine finalises silently.
            close_unawaited_coroutines("stop_daemon")
            gc.collect()

    def start(self) -> OperatorThread:
        self._thread.start()
        if not self._ready.wait(timeout=30):
            raise TimeoutError("the operator did not start")
        return self

    def stop(self) -> None:
        """Graceful: kopf's own shutdown (peering entry removed, cleanup handlers run)."""
        self._stop.set()
        self._thread.join(timeout=30)

    def hard_stop(self) -> None:
        """From inside the operator's loop: every task cancelled, the loop stopped (a crash)."""
        for task in asyncio.all_tasks(self._loop):
            task.cancel()
        self._loop.stop()

    def kill(self) -> None:
        """Crash the operator from any thread and wait until its thread is gone."""
        if self._thread.is_alive():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self.hard_stop)
        self._thread.join(timeout=30)
        # kopf waits for the stop flag in an executor thread; release it, or the process hangs at exit.
        self._stop.set()
        assert not self._thread.is_alive(), "the operator thread survived a kill"

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def __enter__(self) -> OperatorThread:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.kill()


def wait_for(check: Callable[[], T], what: str = "", interval: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy (a generous limit, see ``waiting``)."""
    return eventually(check, what=what, interval=interval)


def model_deployment(name: str, classes: tuple[str, ...] = ("short",), **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "flywheel.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {
                "name": "meta-llama/Llama-2-7b-hf",
                "parametersMillions": 7000,
                "weightSource": "hf://meta-llama/Llama-2-7b-hf",
            },
            "engine": {"kind": "vllm"},
            "gpu": {"allowedTensorParallel": [1, 2]},
            "scaling": {"minInstances": 1, "maxInstances": 4, "warmStandbys": 1},
            "requestClasses": {
                "mode": "Explicit",
                "classes": [
                    {"name": c, "maxInputTokens": 1024 * (i + 1), "maxOutputTokens": 256 * (i + 1)}
                    for i, c in enumerate(classes)
                ],
            },
        },
    }
    body["spec"].update(spec)
    return body


def add_gpu_node(http: httpx.Client, name: str, gpus: int = 8, domains: int = 1) -> None:
    """A GPU Node and its GPUNode with the status a node agent would report."""
    http.post(
        "/api/v1/nodes", json={"metadata": {"name": name, "labels": {"flywheel.dev/gpu": "true"}}, "spec": {}}
    )
    http.post(f"{FW}/gpunodes", json={"metadata": {"name": name}, "spec": {"nodeName": name}})
    per_domain = gpus // domains
    status = {
        "gpuCount": gpus,
        "healthyGpus": gpus,
        "gpus": [
            {
                "uuid": f"GPU-{name}-{i}",
                "index": i,
                "product": "H100-80GB-SXM",
                "memoryMiB": 81559,
                "nvlinkDomain": f"{name}-nvl{i // per_domain}",
            }
            for i in range(gpus)
        ],
    }
    r = http.patch(f"{FW}/gpunodes/{name}/status", json={"status": status}, headers=MERGE)
    r.raise_for_status()


def items(http: httpx.Client, path: str, labels: str = "") -> list[dict[str, Any]]:
    params = {"labelSelector": labels} if labels else None
    r = http.get(path, params=params)
    r.raise_for_status()
    result: list[dict[str, Any]] = r.json()["items"]
    return result


def mark_pods_ready(http: httpx.Client, namespace: str, labels: str) -> int:
    count = 0
    for pod in items(http, f"/api/v1/namespaces/{namespace}/pods", labels):
        conditions = (pod.get("status") or {}).get("conditions") or []
        if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
            continue
        status = {
            "phase": "Running",
            "podIP": "10.0.0.1",
            "conditions": [{"type": "Ready", "status": "True"}],
        }
        http.patch(
            f"/api/v1/namespaces/{namespace}/pods/{pod['metadata']['name']}/status",
            json={"status": status},
            headers=MERGE,
        )
        count += 1
    return count


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return dict(c)
    return None


__all__ = [
    "Operator",
    "OperatorThread",
    "add_gpu_node",
    "condition",
    "items",
    "model_deployment",
    "operator_config",
    "wait_for",
]


def close_unawaited_coroutines(name: str) -> int:
    """Close every never-started coroutine called ``name`` (kopf's orphans); returns how many."""
    closed = 0
    for obj in gc.get_objects():
        if (
            inspect.iscoroutine(obj)
            and obj.__name__ == name
            and inspect.getcoroutinestate(obj) == inspect.CORO_CREATED
        ):
            obj.close()
            closed += 1
    return closed
