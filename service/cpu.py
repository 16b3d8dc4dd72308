"""How much CPU this process may use: the cgroup CPU quota and the affinity mask, not the node's
cores.

`os.cpu_count()` counts the node's cores: on a 64-core node, a pod limited to 2 CPUs still sees 64,
and a thread pool sized from it runs 63 threads that the kernel throttles to 2 CPUs' worth of time
per period. The limit a container runtime sets is a CFS quota in the process's cgroup:
  cgroup v2: `cpu.max` = "QUOTA PERIOD" in microseconds ("max PERIOD": no limit)
  cgroup v1: `cpu.cfs_quota_us` (-1: no limit) and `cpu.cfs_period_us`, in the `cpu` controller
and a quota of 200000 per 100000 us is 2 CPUs. A limit set on any ancestor cgroup applies too, so
every level from the process's own cgroup up to the mount's root is read and the smallest quota
wins. The affinity mask (`taskset`, cpusets, the kubelet's static CPU manager) bounds it as well.

`available_cpus` reads files only (no TensorFlow, no threads); its paths are parameters so tests
give it a fake tree. Unreadable or malformed files are skipped: the answer is then the affinity
mask, as if there were no quota.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
# Names the cgroup v1 cpu controller is mounted under (systemd and Docker use the first two).
_V1_CPU_MOUNTS = ("cpu,cpuacct", "cpu", "cpuacct,cpu")


@dataclass(frozen=True)
class CpuQuota:
    cpus: float  # quota / period
    source: str  # the file and its content, for the log line


@dataclass(frozen=True)
class AvailableCpus:
    """What the process may use: `cpus` = the smaller of the quota and the affinity mask."""

    cpus: float
    node_cpus: int  # os.cpu_count(): every core of the machine
    affinity: int  # CPUs in the process's affinity mask
    quota: CpuQuota | None  # None: no cgroup quota found

    def describe(self) -> str:
        limit = (
            f"cgroup quota {self.quota.cpus:g} CPUs ({self.quota.source})"
            if self.quota
            else "no cgroup CPU quota"
        )
        return (
            f"{self.cpus:g} CPUs available: {limit}, affinity mask {self.affinity} of the "
            f"machine's {self.node_cpus} CPUs"
        )


def _affinity() -> set[int]:
    if hasattr(os, "sched_getaffinity"):
        return os.sched_getaffinity(0)
    return set(range(os.cpu_count() or 1))


def _own_cgroups(proc_self_cgroup: Path) -> dict[str, str]:
    """Controller -> cgroup path of this process; "" is the cgroup v2 (unified) hierarchy."""
    paths: dict[str, str] = {}
    try:
        lines = proc_self_cgroup.read_text().splitlines()
    except OSError:
        return paths
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


def _levels(mount: Path, path: str) -> list[Path]:
    """The folders of a cgroup and its ancestors, inside one mounted hierarchy. Inside a
    container the mount is usually the container's own cgroup (a cgroup namespace, or a bind
    mount of it), so a path that does not exist under the mount means: the mount itself."""
    own = mount / path.lstrip("/")
    if not path.strip("/") or not own.is_dir():
        return [mount]
    levels = [own]
    while levels[-1] != mount and mount in levels[-1].parents:
        levels.append(levels[-1].parent)
    return levels


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _v2_quota(folder: Path) -> CpuQuota | None:
    text = _read(folder / "cpu.max")
    if text is None:
        return None
    fields = text.split()
    try:
        if len(fields) != 2 or fields[0] == "max":
            return None
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        log.debug("ignoring %s: %r is not 'QUOTA PERIOD'", folder / "cpu.max", text)
        return None
    if quota <= 0 or period <= 0:
        return None
    return CpuQuota(quota / period, f"{folder / 'cpu.max'}: {text}")


def _v1_quota(folder: Path) -> CpuQuota | None:
    quota_text = _read(folder / "cpu.cfs_quota_us")
    period_text = _read(folder / "cpu.cfs_period_us")
    if quota_text is None or period_text is None:
        return None
    try:
        quota, period = int(quota_text), int(period_text)
    except ValueError:
        log.debug("ignoring %s: not integers", folder)
        return None
    if quota <= 0 or period <= 0:  # -1: no limit
        return None
    return CpuQuota(
        quota / period, f"{folder}/cpu.cfs_quota_us {quota} / cpu.cfs_period_us {period}"
    )


def cgroup_quota(
    root: Path = CGROUP_ROOT, proc_self_cgroup: Path = PROC_SELF_CGROUP
) -> CpuQuota | None:
    """The smallest CPU quota on this process's cgroup or its ancestors; None when unlimited."""
    cgroups = _own_cgroups(proc_self_cgroup)
    found: list[CpuQuota] = []
    if (root / "cgroup.controllers").is_file():  # cgroup v2, the unified hierarchy
        for folder in _levels(root, cgroups.get("", "/")):
            quota = _v2_quota(folder)
            if quota is not None:
                found.append(quota)
    else:  # cgroup v1: the cpu controller's own hierarchy
        mount = next((root / m for m in _V1_CPU_MOUNTS if (root / m).is_dir()), None)
        if mount is not None:
            for folder in _levels(mount, cgroups.get("cpu", "/")):
                quota = _v1_quota(folder)
                if quota is not None:
                    found.append(quota)
    return min(found, key=lambda q: q.cpus) if found else None


def available_cpus(
    root: Path = CGROUP_ROOT,
    proc_self_cgroup: Path = PROC_SELF_CGROUP,
    affinity: Callable[[], set[int]] = _affinity,
    cpu_count: Callable[[], int | None] = os.cpu_count,
) -> AvailableCpus:
    """The CPUs this process may use: the cgroup quota, bounded by the affinity mask."""
    node = cpu_count() or 1
    mask = len(affinity()) or node
    quota = cgroup_quota(root, proc_self_cgroup)
    cpus = min(float(mask), quota.cpus) if quota else float(mask)
    return AvailableCpus(cpus=cpus, node_cpus=node, affinity=mask, quota=quota)


def whole_cpus(cpus: float) -> int:
    """A quota of 1.5 CPUs keeps 2 threads busy part of the time: round up, at least 1."""
    return max(1, math.ceil(cpus - 1e-9))
