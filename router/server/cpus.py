"""How many CPUs this process may use: its affinity mask, capped by a cgroup CPU quota.

Containers (Docker ``--cpus``, Kubernetes CPU limits) cap CPU time with a cgroup quota
while ``os.cpu_count()`` and the affinity mask still show every core of the host; one
worker per host core would then oversubscribe the quota and throttle every worker.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
# cgroup v2: one file, "QUOTA PERIOD" in microseconds, QUOTA "max" when unlimited.
_V2_CPU_MAX = "cpu.max"
# cgroup v1: quota (-1 when unlimited) and period in two files of the cpu controller,
# mounted alone or together with cpuacct.
_V1_DIRS = ("cpu", "cpu,cpuacct")
_V1_QUOTA = "cpu.cfs_quota_us"
_V1_PERIOD = "cpu.cfs_period_us"


def parse_cpu_max(text: str) -> int | None:
    """Return the CPUs a cgroup v2 ``cpu.max`` line allows (rounded up), None if unlimited."""
    parts = text.split()
    if not parts or parts[0] == "max":
        return None
    try:
        quota = int(parts[0])
        period = int(parts[1]) if len(parts) > 1 else 100_000
    except ValueError:
        return None
    return _cpus(quota, period)


def _cpus(quota: int, period: int) -> int | None:
    if quota <= 0 or period <= 0:
        return None
    return max(1, math.ceil(quota / period))


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        return None


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> int | None:
    """Return the CPUs the cgroup quota allows (v2, else v1), None when there is no quota."""
    text = _read(root / _V2_CPU_MAX)
    if text is not None:
        return parse_cpu_max(text)
    for name in _V1_DIRS:
        quota, period = _read(root / name / _V1_QUOTA), _read(root / name / _V1_PERIOD)
        if quota is not None and period is not None:
            try:
                return _cpus(int(quota), int(period))
            except ValueError:
                return None
    return None


def usable_cpus(root: Path = CGROUP_ROOT) -> int:
    """Return the CPUs this process may use: its affinity mask, capped by the cgroup quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    return cpus if limit is None else min(cpus, limit)
