"""The real backend's NVML handling, against a fake ``pynvml`` (there is no GPU here)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from flywheel.agents.nvml import EventKind, NvmlError, NvmlErrorKind, Ok, real
from flywheel.agents.nvml.real import RealNvml, error_from_exception

NVMLError = real.pynvml.NVMLError


def test_no_driver_is_a_typed_error_not_a_crash() -> None:
    res = RealNvml().init()  # this machine has no NVIDIA driver
    assert isinstance(res, NvmlError)
    assert res.kind in (NvmlErrorKind.LIBRARY_NOT_FOUND, NvmlErrorKind.DRIVER_NOT_LOADED)


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (15, NvmlErrorKind.GPU_IS_LOST),
        (3, NvmlErrorKind.NOT_SUPPORTED),
        (4, NvmlErrorKind.NO_PERMISSION),
        (10, NvmlErrorKind.TIMEOUT),
        (12, NvmlErrorKind.LIBRARY_NOT_FOUND),
        (999, NvmlErrorKind.UNKNOWN),
    ],
)
def test_nvml_return_codes_map_to_kinds(code: int, kind: NvmlErrorKind) -> None:
    err = error_from_exception(NVMLError(code), "nvmlX")
    assert err.kind is kind and err.code == code and err.call == "nvmlX"


def test_foreign_exceptions_become_unknown() -> None:
    err = error_from_exception(OSError("boom"), "nvmlY")
    assert err.kind is NvmlErrorKind.UNKNOWN and "boom" in err.message


class FakePynvml:
    """Two H100s on NVLink; GPU 1 can be made lost; records clock calls."""

    NVMLError = NVMLError
    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2
    NVML_TEMPERATURE_GPU = 0
    NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
    NVML_VOLATILE_ECC = 0
    NVML_AGGREGATE_ECC = 1

    def __init__(self) -> None:
        self.lost: set[int] = set()
        self.calls: list[tuple[Any, ...]] = []
        self.events: list[Any] = []

    def _h(self, h: int) -> int:
        if h in self.lost:
            raise NVMLError(15)
        return h

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetUUID(self, h: int) -> str:
        return f"GPU-{self._h(h)}"

    def nvmlDeviceGetName(self, h: int) -> str:
        return "NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetPciInfo(self, h: int) -> Any:
        return SimpleNamespace(busId=f"00000000:{h + 1:02X}:00.0".encode())

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        return SimpleNamespace(total=80 * 1024**3, used=10 * 1024**3)

    def nvmlDeviceGetSupportedMemoryClocks(self, h: int) -> list[int]:
        return [2619, 1593]

    def nvmlDeviceGetSupportedGraphicsClocks(self, h: int, mem: int) -> list[int]:
        assert mem == 2619
        return [1980, 1965, 210]

    def nvmlDeviceGetDefaultApplicationsClock(self, h: int, kind: int) -> int:
        return 1755

    def nvmlDeviceGetP2PStatus(self, a: int, b: int, idx: int) -> int:
        return 0

    def nvmlDeviceGetNvLinkState(self, h: int, link: int) -> int:
        if link >= 2:
            raise NVMLError(2)
        return 1

    def nvmlDeviceGetClockInfo(self, h: int, kind: int) -> int:
        return 1980 if kind == 1 else 2619

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        return 350_500 if self._h(h) == 0 else 100_000

    def nvmlDeviceGetTotalEnergyConsumption(self, h: int) -> int:
        return 123_456

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        return SimpleNamespace(gpu=87, memory=40)

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        return 61

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: int) -> int:
        raise NVMLError(3)  # not supported on this fake

    def nvmlDeviceGetTotalEccErrors(self, h: int, etype: int, ctype: int) -> int:
        return 0 if etype == 0 else 1

    def nvmlDeviceGetRemappedRows(self, h: int) -> tuple[int, int, int, int]:
        return (1, 2, 1, 0)

    def nvmlDeviceGetPcieReplayCounter(self, h: int) -> int:
        return 5

    def nvmlDeviceGetNvLinkErrorCounter(self, h: int, link: int, counter: int) -> int:
        return counter

    def nvmlDeviceGetFieldValues(self, h: int, ids: list[int]) -> Any:
        return [SimpleNamespace(nvmlReturn=0, value=SimpleNamespace(uiVal=0))]

    def nvmlEventSetCreate(self) -> str:
        return "set"

    def nvmlEventSetFree(self, s: str) -> None: ...
    def nvmlDeviceGetSupportedEventTypes(self, h: int) -> int:
        return 0xFFFF

    def nvmlDeviceRegisterEvents(self, h: int, mask: int, s: str) -> None:
        self.calls.append(("register", h, mask))

    def nvmlEventSetWait(self, s: str, timeout_ms: int) -> Any:
        if not self.events:
            raise NVMLError(10)
        return self.events.pop(0)

    def nvmlSystemGetDriverVersion(self) -> bytes:
        return b"550.90.07"

    def nvmlDeviceSetGpuLockedClocks(self, h: int, lo: int, hi: int) -> None:
        self.calls.append(("lock", self._h(h), lo, hi))

    def nvmlDeviceResetGpuLockedClocks(self, h: int) -> None:
        self.calls.append(("reset", self._h(h)))


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakePynvml:
    f = FakePynvml()
    monkeypatch.setattr(real, "pynvml", f)
    return f


def test_enumeration_topology_and_sample(fake: FakePynvml) -> None:
    nv = RealNvml()
    assert isinstance(nv.init(), Ok)
    assert nv.driver_version() == Ok("550.90.07")
    devs = nv.devices()
    assert isinstance(devs, Ok)
    d0 = devs.value[0]
    assert (d0.uuid, d0.product, d0.memory_total_mib, d0.pci_bus_id) == (
        "GPU-0",
        "NVIDIA H100 80GB HBM3",
        81920,
        "00000000:01:00.0",
    )
    assert d0.supported_sm_clocks_mhz == (210, 1965, 1980) and d0.default_sm_clock_mhz == 1755
    assert d0.nvlink_peers == ("GPU-1",)
    assert [c[0] for c in fake.calls] == ["register", "register"]
    s = nv.sample(0)
    assert isinstance(s, Ok)
    v = s.value
    assert (v.power_watts, v.gpu_utilization_pct, v.memory_used_mib, v.temperature_celsius) == (
        350.5,
        87,
        10240,
        61,
    )
    assert (v.ecc_dbe_volatile, v.remap_pending, v.remap_failure, v.pcie_replays) == (1, True, False, 5)
    assert v.nvlink_errors == {"replay": 0, "recovery": 2, "crc_flit": 4, "crc_data": 6}  # two active links
    assert v.clock_event_reasons is None and v.unsupported == ("clock_event_reasons",)


def test_gpu_lost_mid_run_is_reported(fake: FakePynvml) -> None:
    nv = RealNvml()
    nv.init()
    fake.lost.add(1)
    res = nv.sample(1)
    assert isinstance(res, NvmlError) and res.gpu_lost
    lock = nv.set_locked_clocks(1, 1000, 1000)
    assert isinstance(lock, NvmlError) and lock.kind is NvmlErrorKind.GPU_IS_LOST
    assert isinstance(nv.sample(0), Ok)


def test_events_and_clock_calls(fake: FakePynvml) -> None:
    nv = RealNvml()
    nv.init()
    assert nv.wait_event(10) == Ok(None)  # NVML timeout is "no event"
    fake.events.append(SimpleNamespace(device=0, eventType=0x8, eventData=79))
    fake.events.append(SimpleNamespace(device=1, eventType=0x4000, eventData=0))
    fake.events.append(SimpleNamespace(device=1, eventType=0x8000, eventData=2))
    fake.lost.add(1)  # the event's GPU no longer answers: its UUID comes from the cached handles
    xid, lost, rec = (nv.wait_event(10) for _ in range(3))
    assert xid == Ok(real.GPUEvent(EventKind.XID, "GPU-0", 79))
    assert lost == Ok(real.GPUEvent(EventKind.GPU_UNAVAILABLE, "GPU-1", 0))
    assert rec == Ok(real.GPUEvent(EventKind.RECOVERY_ACTION, "GPU-1", 2))
    assert nv.set_locked_clocks(0, 1200, 1200) == Ok(None)
    assert nv.reset_locked_clocks(0) == Ok(None)
    assert fake.calls[-2:] == [("lock", 0, 1200, 1200), ("reset", 0)]
    bad = nv.set_locked_clocks(7, 1, 1)
    assert isinstance(bad, NvmlError) and bad.kind is NvmlErrorKind.INVALID_ARGUMENT


def test_gpu_check_script_reads_everything_and_changes_nothing(
    fake: FakePynvml, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.machinery
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "gpu-check"
    loader = importlib.machinery.SourceFileLoader("gpu_check", str(path))
    spec = importlib.util.spec_from_loader("gpu_check", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    fake.events.append(SimpleNamespace(device=0, eventType=0x8, eventData=31))
    monkeypatch.setattr("sys.argv", ["gpu-check", "--events-seconds", "0.3"])
    assert module.main() == 0
    out = capsys.readouterr().out
    assert "GPU 0 GPU-0 NVIDIA H100 80GB HBM3" in out and "GPU 1 GPU-1" in out
    assert "power_watts: 350.5" in out and "supported SM clocks 210..1980 MHz" in out
    assert "'data': 31" in out  # the XID event it saw
    assert not [c for c in fake.calls if c[0] in ("lock", "reset")]
