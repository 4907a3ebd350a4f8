"""The usable CPU count: affinity capped by a cgroup v2 or v1 CPU quota, read from files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from router.server.cpus import cgroup_cpu_limit, parse_cpu_max, usable_cpus


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("max 100000\n", None),
        ("200000 100000\n", 2),
        ("150000 100000\n", 2),  # 1.5 CPUs: round up, a worker may use a part of a core
        ("50000 100000\n", 1),
        ("1000 100000\n", 1),
        ("400000\n", 4),  # the period defaults to 100 ms
        ("", None),
        ("garbage here\n", None),
        ("0 100000\n", None),
    ],
)
def test_parse_cpu_max(text: str, cpus: int | None) -> None:
    assert parse_cpu_max(text) == cpus


def test_cgroup_v2_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("300000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 3


@pytest.mark.parametrize("controller", ["cpu", "cpu,cpuacct"])
def test_cgroup_v1_quota(tmp_path: Path, controller: str) -> None:
    (tmp_path / controller).mkdir()
    (tmp_path / controller / "cpu.cfs_quota_us").write_text("250000\n")
    (tmp_path / controller / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(tmp_path) == 3
    (tmp_path / controller / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(tmp_path) is None


def test_no_cgroup_files_means_no_limit(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(tmp_path) is None
    assert usable_cpus(tmp_path) == len(os.sched_getaffinity(0))


def test_usable_cpus_is_the_smaller_of_affinity_and_quota(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text("100000 100000\n")
    assert usable_cpus(tmp_path) == 1
    (tmp_path / "cpu.max").write_text(f"{(affinity + 8) * 100000} 100000\n")
    assert usable_cpus(tmp_path) == affinity
