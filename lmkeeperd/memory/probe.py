"""How much memory this machine has, as one immutable snapshot.

`MemoryProbe` is the seam: production uses `PsutilProbe`, tests hand in a
`StaticProbe` with fixed numbers.

`PsutilProbe.read()` combines:
- `psutil.virtual_memory()`: total RAM and what the kernel calls available;
- on Linux, the memory limit of the cgroup this process runs in, so that a
  daemon inside a container (or a systemd slice with `MemoryMax=`) sees the
  limit instead of the host's RAM. cgroup v2 `memory.max` ("max" = none) and v1
  `memory.limit_in_bytes` are read for this process's cgroup (from
  /proc/self/cgroup and /proc/self/mountinfo) and every ancestor up to the
  mount root: the lowest limit wins. Usage is `memory.current` minus reclaimable
  `inactive_file` (the "working set", as container tools count it).
  Caveat: the limit is the daemon's own cgroup's. It constrains LM Studio only
  when both run in it (a container running llmster and lmkeeperd); a service
  unit that caps lmkeeperd alone with MemoryMax= would wrongly shrink the budget.
- Apple Silicon (Darwin on arm64): RAM is also the GPU's memory.
- NVIDIA GPUs through NVML, only when the optional `nvidia-ml-py` package
  imports and initialises; never required, and failures just mean "no GPU info".
"""

from __future__ import annotations

import contextlib
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

# v1 reports "no limit" as a page-rounded LONG_MAX; anything this big is none.
_NO_LIMIT_THRESHOLD = 1 << 60


@dataclass(frozen=True, slots=True)
class GpuInfo:
    """Dedicated GPU memory (NVIDIA), summed over `device_count` devices."""

    name: str
    total_bytes: int
    free_bytes: int
    device_count: int = 1


@dataclass(frozen=True, slots=True)
class MemorySnapshot:
    total_bytes: int
    available_bytes: int
    cgroup_limit_bytes: int | None = None
    # Working set of that cgroup; None when no limit applies or it is unknown.
    cgroup_usage_bytes: int | None = None
    is_apple_silicon: bool = False
    gpu: GpuInfo | None = None

    @property
    def effective_total_bytes(self) -> int:
        if self.cgroup_limit_bytes is not None:
            return min(self.total_bytes, self.cgroup_limit_bytes)
        return self.total_bytes

    @property
    def effective_available_bytes(self) -> int:
        """Available RAM, also bounded by what the cgroup limit leaves."""
        available = min(self.available_bytes, self.effective_total_bytes)
        if self.cgroup_limit_bytes is not None and self.cgroup_usage_bytes is not None:
            available = min(available, max(0, self.cgroup_limit_bytes - self.cgroup_usage_bytes))
        return available


class MemoryProbe(Protocol):
    def read(self) -> MemorySnapshot: ...


class StaticProbe:
    """A probe that always answers the same snapshot (tests, emulator runs)."""

    def __init__(self, snapshot: MemorySnapshot) -> None:
        self.snapshot = snapshot

    def read(self) -> MemorySnapshot:
        return self.snapshot


ReadText = Callable[[Path], str | None]


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


class PsutilProbe:
    """The real machine. `gpu=False` skips NVML (cheaper: for frequent polling)."""

    def __init__(
        self,
        *,
        gpu: bool = True,
        read_text: ReadText = _read_text,
        proc: Path = Path("/proc/self"),
    ) -> None:
        self._want_gpu = gpu
        self._read_text = read_text
        self._proc = proc
        self._nvml: Any = None
        self._nvml_failed = False

    def read(self) -> MemorySnapshot:
        import psutil

        vm = psutil.virtual_memory()
        limit = usage = None
        if sys.platform.startswith("linux"):
            limit, usage = cgroup_memory(self._read_text, self._proc)
        return MemorySnapshot(
            total_bytes=int(vm.total),
            available_bytes=int(vm.available),
            cgroup_limit_bytes=limit,
            cgroup_usage_bytes=usage,
            is_apple_silicon=is_apple_silicon(),
            gpu=self._read_gpu() if self._want_gpu else None,
        )

    def _read_gpu(self) -> GpuInfo | None:
        if self._nvml_failed:
            return None
        try:
            if self._nvml is None:
                import pynvml  # type: ignore[import-not-found, unused-ignore]

                pynvml.nvmlInit()
                self._nvml = pynvml
            nvml = self._nvml
            count = int(nvml.nvmlDeviceGetCount())
            if count == 0:
                return None
            total = free = 0
            name = ""
            for index in range(count):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                info = nvml.nvmlDeviceGetMemoryInfo(handle)
                total += int(info.total)
                free += int(info.free)
                if not name:
                    raw = nvml.nvmlDeviceGetName(handle)
                    name = raw.decode() if isinstance(raw, bytes) else str(raw)
            return GpuInfo(name=name, total_bytes=total, free_bytes=free, device_count=count)
        except Exception:
            # No package, no driver, no device, or a driver error: GPU figures are
            # a bonus, so any failure means "unknown" and we stop asking.
            self._nvml_failed = True
            return None

    def close(self) -> None:
        if self._nvml is not None:
            # Shutting down a bonus feature must not fail anything.
            with contextlib.suppress(Exception):
                self._nvml.nvmlShutdown()
            self._nvml = None


def is_apple_silicon() -> bool:
    # Under Rosetta, platform.machine() says x86_64 although the GPU still shares
    # RAM; we accept that miss rather than shelling out to sysctl.
    return sys.platform == "darwin" and platform.machine() == "arm64"


def cgroup_memory(
    read_text: ReadText = _read_text, proc: Path = Path("/proc/self")
) -> tuple[int | None, int | None]:
    """(limit, working-set usage) of this process's memory cgroup, or (None, None)."""
    membership = read_text(proc / "cgroup")
    mountinfo = read_text(proc / "mountinfo")
    if not membership or not mountinfo:
        return None, None
    for directory, mount, version in _cgroup_dirs(membership, mountinfo):
        limit_file = "memory.max" if version == 2 else "memory.limit_in_bytes"
        limit = None
        current = directory
        while True:
            found = _parse_limit(read_text(current / limit_file))
            if found is not None and (limit is None or found < limit):
                limit = found
            if current == mount or current == current.parent:
                break
            current = current.parent
        if limit is not None:
            return limit, _working_set(read_text, directory, version)
    return None, None


def _cgroup_dirs(membership: str, mountinfo: str) -> list[tuple[Path, Path, int]]:
    """(directory, its mount point, version) of this process's memory cgroup; v2 first."""
    v2_path = v1_path = None
    for line in membership.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2_path = path
        elif "memory" in controllers.split(","):
            v1_path = path
    found: list[tuple[Path, Path, int]] = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3:
            continue
        root, mount_point, fstype, options = fields[3], fields[4], tail[0], tail[2]
        mount = Path(mount_point.replace("\\040", " "))
        if fstype == "cgroup2" and v2_path is not None:
            found.insert(0, (_inside(mount, root, v2_path), mount, 2))
        elif fstype == "cgroup" and v1_path is not None and "memory" in options.split(","):
            found.append((_inside(mount, root, v1_path), mount, 1))
    return found


def _inside(mount: Path, root: str, cgroup_path: str) -> Path:
    """Where `cgroup_path` (as /proc/self/cgroup shows it) lives under this mount."""
    if root != "/" and (cgroup_path == root or cgroup_path.startswith(root.rstrip("/") + "/")):
        cgroup_path = cgroup_path[len(root) :]
    # Otherwise the path is already relative to the mount (a cgroup namespace).
    relative = cgroup_path.strip("/")
    return mount / relative if relative else mount


def _parse_limit(text: str | None) -> int | None:
    if text is None:
        return None
    value = text.strip()
    if not value or value == "max":
        return None
    try:
        limit = int(value)
    except ValueError:
        return None
    return limit if 0 < limit < _NO_LIMIT_THRESHOLD else None


def _working_set(read_text: ReadText, directory: Path, version: int) -> int | None:
    usage_file = "memory.current" if version == 2 else "memory.usage_in_bytes"
    inactive_key = "inactive_file" if version == 2 else "total_inactive_file"
    usage_text = read_text(directory / usage_file)
    if usage_text is None:
        return None
    try:
        usage = int(usage_text.strip())
    except ValueError:
        return None
    for line in (read_text(directory / "memory.stat") or "").splitlines():
        name, _, value = line.partition(" ")
        if name == inactive_key and value.strip().isdigit():
            return max(0, usage - int(value))
    return usage
