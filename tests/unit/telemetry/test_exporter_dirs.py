"""Which metrics multiprocess directories a starting supervisor removes (remove_dead_dirs)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from router.telemetry.exporter import METRICS_DIR_PREFIX, OWNER_LOCK, remove_dead_dirs


def made(parent: Path, name: str, owner: str | None) -> Path:
    """Make a directory as a server would; ``owner`` None: no lock file at all."""
    path = parent / f"{METRICS_DIR_PREFIX}{name}"
    path.mkdir()
    (path / "counter_123.db").write_bytes(b"")
    if owner is not None:
        (path / OWNER_LOCK).write_text(owner)
    return path


def test_only_an_unlocked_directory_with_its_owner_pid_is_removed(tmp_path: Path) -> None:
    dead = made(tmp_path, "dead", "4242\n")
    live = made(tmp_path, "live", "4343\n")
    being_made = made(tmp_path, "new", "")  # created, not yet locked by its owner
    older = made(tmp_path, "older", None)  # an older version's, without a lock file
    other = tmp_path / "something-else"
    other.mkdir()
    (other / OWNER_LOCK).write_text("4444\n")
    # A live server holds the lock (any other open file description conflicts with it).
    holder = os.open(live / OWNER_LOCK, os.O_RDONLY)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        assert remove_dead_dirs(tmp_path) == [dead]
    finally:
        os.close(holder)
    assert not dead.exists()
    assert all(p.is_dir() for p in (live, being_made, older, other))
    # Its server gone, the lock is free: the next start removes it.
    assert remove_dead_dirs(tmp_path) == [live]
