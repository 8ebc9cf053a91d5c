"""The probe (real and fake) and the budget computed from its snapshot."""

from __future__ import annotations

import platform
import sys
import types
from collections.abc import Callable
from pathlib import Path

import pytest

from lmkeeperd.memory.budgeting import budget
from lmkeeperd.memory.probe import (
    GpuInfo,
    MemorySnapshot,
    PsutilProbe,
    StaticProbe,
    cgroup_memory,
)

GB = 10**9


def test_psutil_probe_reads_this_machine() -> None:
    probe = PsutilProbe()
    try:
        snapshot = probe.read()
    finally:
        probe.close()
    assert snapshot.total_bytes > 0
    assert 0 < snapshot.available_bytes <= snapshot.total_bytes
    assert 0 < snapshot.effective_available_bytes <= snapshot.effective_total_bytes
    if snapshot.cgroup_limit_bytes is not None:
        assert snapshot.cgroup_limit_bytes > 0
    assert snapshot.is_apple_silicon == (sys.platform == "darwin" and platform.machine() == "arm64")


def test_budget_is_the_fraction_of_ram() -> None:
    b = budget(MemorySnapshot(total_bytes=24 * GB, available_bytes=17 * GB), 0.8)
    assert b.budget_bytes == int(0.8 * 24 * GB)
    assert b.available_bytes == 17 * GB
    assert b.usable_bytes == 17 * GB
    assert not b.limited_by_cgroup


def test_a_cgroup_limit_lower_than_ram_is_the_total() -> None:
    snapshot = MemorySnapshot(
        total_bytes=64 * GB,
        available_bytes=60 * GB,
        cgroup_limit_bytes=16 * GB,
        cgroup_usage_bytes=4 * GB,
    )
    b = budget(snapshot, 0.75)
    assert b.effective_total_bytes == 16 * GB
    assert b.budget_bytes == 12 * GB
    # the container has 16 - 4 = 12 GB left although the host has 60 free
    assert b.available_bytes == 12 * GB
    assert b.limited_by_cgroup
    assert b.total_bytes == 64 * GB


def test_a_cgroup_limit_above_ram_changes_nothing() -> None:
    snapshot = MemorySnapshot(
        total_bytes=16 * GB, available_bytes=10 * GB, cgroup_limit_bytes=1000 * GB
    )
    b = budget(snapshot, 0.8)
    assert b.effective_total_bytes == 16 * GB
    assert not b.limited_by_cgroup


def test_memory_freed_by_the_unloaded_model_counts_as_available() -> None:
    # LM Studio bug #1562: a switch between two 10 GB models on 24 GB, with
    # 12 GB free while the first is loaded, must not be advised against.
    snapshot = MemorySnapshot(total_bytes=24 * GB, available_bytes=12 * GB)
    without = budget(snapshot, 0.8)
    at_switch = budget(snapshot, 0.8, freed_bytes=10 * GB)
    assert without.usable_bytes == 12 * GB
    assert at_switch.available_bytes == 22 * GB
    assert at_switch.usable_bytes == int(0.8 * 24 * GB)
    assert at_switch.freed_bytes == 10 * GB


def test_freed_bytes_never_invent_memory_beyond_the_total() -> None:
    snapshot = MemorySnapshot(total_bytes=16 * GB, available_bytes=10 * GB)
    assert budget(snapshot, 1.0, freed_bytes=100 * GB).available_bytes == 16 * GB
    assert budget(snapshot, 1.0, freed_bytes=-5).available_bytes == 10 * GB


@pytest.mark.parametrize("fraction", [0, -0.5, 1.5])
def test_fraction_out_of_range_is_refused(fraction: float) -> None:
    with pytest.raises(ValueError, match="budget_fraction"):
        budget(MemorySnapshot(total_bytes=GB, available_bytes=GB), fraction)


def test_static_probe_and_gpu_pass_through() -> None:
    gpu = GpuInfo(name="RTX 4090", total_bytes=24 * GB, free_bytes=20 * GB)
    snapshot = MemorySnapshot(total_bytes=64 * GB, available_bytes=50 * GB, gpu=gpu)
    assert budget(StaticProbe(snapshot).read(), 0.8).gpu == gpu


def _fake_fs(files: dict[str, str]) -> Callable[[Path], str | None]:
    def read_text(path: Path) -> str | None:
        return files.get(str(path))

    return read_text


def test_cgroup_v2_limit_from_this_process_and_its_ancestors() -> None:
    files = {
        "/proc/self/cgroup": "0::/system.slice/docker-abc.scope\n",
        "/proc/self/mountinfo": (
            "30 25 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw\n"
            "31 25 0:27 / /proc rw - proc proc rw\n"
        ),
        "/sys/fs/cgroup/system.slice/docker-abc.scope/memory.max": "8589934592\n",
        "/sys/fs/cgroup/system.slice/memory.max": "4294967296\n",
        "/sys/fs/cgroup/system.slice/docker-abc.scope/memory.current": "3000000000\n",
        "/sys/fs/cgroup/system.slice/docker-abc.scope/memory.stat": (
            "anon 1000\nfile 2000\ninactive_file 1000000000\n"
        ),
    }
    limit, usage = cgroup_memory(_fake_fs(files), Path("/proc/self"))
    assert limit == 4294967296  # the parent slice is tighter than the container
    assert usage == 2_000_000_000  # current minus reclaimable inactive file cache


def test_cgroup_v2_max_means_no_limit() -> None:
    files = {
        "/proc/self/cgroup": "0::/user.slice\n",
        "/proc/self/mountinfo": "30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
        "/sys/fs/cgroup/user.slice/memory.max": "max\n",
    }
    assert cgroup_memory(_fake_fs(files), Path("/proc/self")) == (None, None)


def test_cgroup_namespace_root_is_the_mount() -> None:
    files = {
        "/proc/self/cgroup": "0::/\n",
        "/proc/self/mountinfo": "30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
        "/sys/fs/cgroup/memory.max": "2147483648\n",
        "/sys/fs/cgroup/memory.current": "1073741824\n",
    }
    assert cgroup_memory(_fake_fs(files), Path("/proc/self")) == (2147483648, 1073741824)


def test_cgroup_v1_memory_controller() -> None:
    files = {
        "/proc/self/cgroup": "4:memory:/docker/abc\n1:cpu:/\n0::/\n",
        "/proc/self/mountinfo": (
            "40 30 0:35 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
            "41 30 0:36 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
        ),
        "/sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes": "1073741824\n",
        "/sys/fs/cgroup/memory/docker/memory.limit_in_bytes": "9223372036854771712\n",
        "/sys/fs/cgroup/memory/docker/abc/memory.usage_in_bytes": "500000000\n",
        "/sys/fs/cgroup/memory/docker/abc/memory.stat": "total_inactive_file 100000000\n",
    }
    assert cgroup_memory(_fake_fs(files), Path("/proc/self")) == (1073741824, 400_000_000)


def test_cgroup_v1_unlimited_is_no_limit() -> None:
    files = {
        "/proc/self/cgroup": "4:memory:/\n",
        "/proc/self/mountinfo": "40 30 0:35 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",
    }
    assert cgroup_memory(_fake_fs(files), Path("/proc/self")) == (None, None)


def test_no_proc_means_no_cgroup_limit() -> None:
    assert cgroup_memory(_fake_fs({}), Path("/proc/self")) == (None, None)


def test_psutil_probe_applies_a_cgroup_limit_found_in_the_files() -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("cgroups are Linux only")
    files = {
        "/fake/proc/cgroup": "0::/box\n",
        "/fake/proc/mountinfo": "30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
        "/sys/fs/cgroup/box/memory.max": "1000000\n",
        "/sys/fs/cgroup/box/memory.current": "400000\n",
    }
    probe = PsutilProbe(gpu=False, read_text=_fake_fs(files), proc=Path("/fake/proc"))
    snapshot = probe.read()
    assert snapshot.cgroup_limit_bytes == 1_000_000
    assert snapshot.effective_total_bytes == 1_000_000
    assert snapshot.effective_available_bytes == 600_000


class _FakeNvml(types.ModuleType):
    """Stands in for nvidia-ml-py: two devices, to test how the probe sums them."""

    def __init__(self) -> None:
        super().__init__("pynvml")
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> types.SimpleNamespace:
        return types.SimpleNamespace(total=(handle + 1) * 8 * GB, free=(handle + 1) * 2 * GB)

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return b"NVIDIA GeForce RTX 4060"


def test_gpu_memory_is_summed_over_nvml_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    probe = PsutilProbe()
    gpu = probe.read().gpu
    probe.close()
    assert gpu == GpuInfo(
        name="NVIDIA GeForce RTX 4060", total_bytes=24 * GB, free_bytes=6 * GB, device_count=2
    )
    assert fake.shutdowns == 1


def test_without_nvml_there_is_no_gpu_info(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes `import pynvml` fail, as on a machine without it.
    monkeypatch.setitem(sys.modules, "pynvml", None)
    probe = PsutilProbe()
    assert probe.read().gpu is None
    assert probe.read().gpu is None
    probe.close()
