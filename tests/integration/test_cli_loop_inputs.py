"""Bad inputs to ``modelrouter export``, ``label`` and ``stats``, in subprocesses.

An ``--out`` that cannot be written is refused before any work (``label`` pays for its
calls), a store is never overwritten by its own export, every ``--since`` reads the same way
in all three commands, and a store that cannot be opened is one line, not a traceback.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from router.loop import cli as loop_cli
from router.store import FeedbackRecord, open_store
from router.store import cli as store_cli
from tests.fakes.fake_openai import FakeOpenAIServer
from tests.integration.test_cli import assert_clean_error
from tests.integration.test_loop import T0, loop_config, stored

# 2023-11-14T22:13:21.5 UTC: after r0, r1 and g1, before the rest.
BETWEEN = "2023-11-14T22:13:21.5"


def modelrouter(
    *args: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m router.cli ARGS`` (with extra environment variables)."""
    return subprocess.run(
        [sys.executable, "-m", "router.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.fixture
def store_path(tmp_path: Path) -> Iterator[Path]:
    """A SQLite store of nine requests (eight kept their text) and one rating."""
    path = tmp_path / "store.db"
    store = open_store(path)
    records: list[Any] = [stored(f"r{i}", f"What is {i} + {i}?", time_s=T0 + i) for i in range(6)]
    records.append(stored("g1", "Why is the sky blue?", tenant="globex", time_s=T0))
    records.append(stored("chat1", "And in French?", time_s=T0 + 10))
    records.append(stored("notext", None, time_s=T0 + 11))
    records.append(FeedbackRecord("r1", T0 + 100, "acme", 0.9, "good", ""))
    store.write(records)
    store.close()
    yield path


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAIServer]:
    server = FakeOpenAIServer(tokens_per_second=10_000)
    await server.start()
    yield server
    await server.stop()


def label(store: Path, config: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return modelrouter(
        "label", "--store", store, "--config", config, "--judge", "judge", "--out", out, *extra
    )


def chat_calls(fake: FakeOpenAIServer) -> int:
    return sum(r.path.endswith("/chat/completions") for r in fake.requests)


def exported_ids(out: Path) -> set[str]:
    return {json.loads(line)["id"] for line in out.read_text().splitlines()}


# -- export onto its own store -----------------------------------------------------------


@pytest.mark.parametrize("spelling", ["same", "relative", "symlink"])
def test_export_refuses_to_overwrite_its_own_store(
    store_path: Path, tmp_path: Path, spelling: str
) -> None:
    before = store_path.read_bytes()
    out = {
        "same": store_path,
        "relative": tmp_path / "sub" / ".." / store_path.name,
        "symlink": tmp_path / "link.jsonl",
    }[spelling]
    (tmp_path / "sub").mkdir()
    if spelling == "symlink":
        out.symlink_to(store_path)
    result = modelrouter("export", "--store", store_path, "--out", out)
    assert_clean_error(result, str(out), "is the store --store names")
    assert len(result.stderr.splitlines()) == 1
    assert store_path.read_bytes() == before
    open_store(store_path, migrate=False).close()


async def test_label_refuses_to_overwrite_its_own_store(
    store_path: Path, fake: FakeOpenAIServer, tmp_path: Path
) -> None:
    config = loop_config(tmp_path / "router.yaml", fake)
    before = store_path.read_bytes()
    result = await asyncio.to_thread(label, store_path, config, store_path, "--sample", "2")
    assert_clean_error(result, str(store_path), "is the store --store names")
    assert chat_calls(fake) == 0 and store_path.read_bytes() == before


# -- an --out that cannot be written -----------------------------------------------------


def unwritable_outs(tmp_path: Path) -> list[tuple[Path, str]]:
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "a_file").write_text("")
    return [
        (tmp_path / "nonexistent" / "l.jsonl", "No such file or directory"),
        (tmp_path / "a_dir", "Is a directory"),
        (tmp_path / "a_file" / "l.jsonl", "Not a directory"),
    ]


async def test_label_checks_out_before_paying_for_any_call(
    store_path: Path, fake: FakeOpenAIServer, tmp_path: Path
) -> None:
    config = loop_config(tmp_path / "router.yaml", fake)
    for out, reason in unwritable_outs(tmp_path):
        result = await asyncio.to_thread(label, store_path, config, out, "--sample", "3")
        assert_clean_error(result, f"{out}: {reason}")
        assert len(result.stderr.splitlines()) == 1
    assert chat_calls(fake) == 0


def test_export_checks_out_before_reading_the_store(store_path: Path, tmp_path: Path) -> None:
    for out, reason in unwritable_outs(tmp_path):
        # A store that is not there: the out path is what is reported, and first.
        result = modelrouter("export", "--store", tmp_path / "missing.db", "--out", out)
        assert_clean_error(result, f"{out}: {reason}")
        assert len(result.stderr.splitlines()) == 1


async def test_a_label_write_that_fails_after_the_calls_says_how_to_resume(
    store_path: Path, fake: FakeOpenAIServer, tmp_path: Path
) -> None:
    config = loop_config(tmp_path / "router.yaml", fake)
    out = tmp_path / "labels.jsonl"
    # The rows go to a temporary file beside --out: a directory there fails only the write.
    blocker = tmp_path / f".{out.name}.tmp"
    blocker.mkdir()
    failed = await asyncio.to_thread(label, store_path, config, out, "--sample", "3")
    assert failed.returncode == 1, failed.stderr
    assert "Traceback" not in failed.stderr
    last = failed.stderr.splitlines()[-1]
    assert last.startswith(f"modelrouter: {out}: ") and "--resume" in last, last
    paid = chat_calls(fake)
    assert paid == 12
    blocker.rmdir()
    resumed = await asyncio.to_thread(label, store_path, config, out, "--sample", "3", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "0 calls paid" in resumed.stdout and chat_calls(fake) == paid
    assert len(out.read_text().splitlines()) == 3


# -- --since -------------------------------------------------------------------------------


@pytest.mark.parametrize("since", ["nan", "inf", "-inf", "1e999", "Infinity", "9" * 400 + "d"])
@pytest.mark.parametrize("command", ["stats", "export", "label"])
def test_a_since_that_is_not_a_time_is_refused_by_every_command(
    store_path: Path, tmp_path: Path, since: str, command: str
) -> None:
    out = tmp_path / "rows.jsonl"
    args: list[str | Path] = [command, "--store", store_path, f"--since={since}"]
    if command != "stats":
        args += ["--out", out]
    if command == "label":
        args += ["--config", tmp_path / "unused.yaml", "--sample", "1", "--judge", "judge"]
    result = modelrouter(*args)
    assert result.returncode == 2, result.stderr
    assert f"argument --since: {since!r}: not a time" in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()


def stats_requests(store: Path, since: str, env: dict[str, str] | None = None) -> int:
    result = modelrouter("stats", "--store", store, "--since", since, "--json", env=env)
    assert result.returncode == 0, result.stderr
    total: int = json.loads(result.stdout)["total"]["requests"]
    return total


def export_ids(store: Path, out: Path, since: str, env: dict[str, str] | None = None) -> set[str]:
    result = modelrouter("export", "--store", store, "--out", out, "--since", since, env=env)
    assert result.returncode == 0, result.stderr
    return exported_ids(out)


@pytest.mark.parametrize(
    "since", [BETWEEN, BETWEEN.replace("T", " "), f"{BETWEEN}+00:00", str(T0 + 1.5)]
)
def test_stats_and_export_read_a_since_alike_whatever_the_local_time_zone(
    store_path: Path, tmp_path: Path, since: str
) -> None:
    # A date without an offset is UTC: the shell's time zone changes nothing.
    for zone in ("UTC", "Asia/Tokyo", "America/Los_Angeles"):
        env = {"TZ": zone}
        assert stats_requests(store_path, since, env) == 6  # r2-r5, chat1, notext
        assert export_ids(store_path, tmp_path / "rows.jsonl", since, env) == {
            "r2",
            "r3",
            "r4",
            "r5",
            "chat1",
        }
    # A given offset is kept: 07:13:21.5 in Tokyo is 22:13:21.5 UTC the day before.
    tokyo = "2023-11-15T07:13:21.5+09:00"
    assert stats_requests(store_path, tokyo) == 6


def test_stats_and_export_both_take_durations_in_weeks_and_unix_seconds(
    store_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "rows.jsonl"
    # The store's requests are from 2023: none within two weeks, all since second 0.
    assert stats_requests(store_path, "2w") == 0
    assert export_ids(store_path, out, "2w") == set()
    assert stats_requests(store_path, "0") == 9
    assert len(export_ids(store_path, out, "0")) == 8


@pytest.mark.parametrize("command", ["stats", "export", "label"])
def test_every_since_help_says_how_a_date_is_read(command: str) -> None:
    result = modelrouter(command, "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "UTC unless it gives an offset" in text and "Unix seconds" in text and "2w" in text


def test_parse_since_reads_every_form_one_way() -> None:
    assert loop_cli.parse_since is store_cli.parse_since
    parse_since = store_cli.parse_since
    now = 1_800_000_000.0
    assert parse_since("2w", now) == now - 14 * 86400
    assert parse_since("1.5h", now) == now - 5400
    assert parse_since(" 90s ", now) == now - 90
    assert parse_since("1700000000", now) == 1_700_000_000.0
    assert parse_since("1970-01-02", now) == 86400.0
    assert parse_since("1970-01-01T09:00:00+09:00", now) == 0.0


# -- stores that cannot be opened --------------------------------------------------------


@pytest.mark.parametrize("command", ["stats", "export", "label"])
def test_a_store_in_an_unknown_users_home_is_one_line(
    tmp_path: Path, fake_config: Path, command: str
) -> None:
    target = "~no_such_user_xq7/x.db"
    args: list[str | Path] = [command, "--store", target]
    if command != "stats":
        args += ["--out", tmp_path / "rows.jsonl"]
    if command == "label":
        args += ["--config", fake_config, "--sample", "1", "--judge", "judge"]
    result = modelrouter(*args)
    assert_clean_error(result, f"{target}: no home directory for '~no_such_user_xq7'")


@pytest.fixture
def fake_config(tmp_path: Path) -> Path:
    """A valid configuration whose backend is never reached."""

    class Unreached:
        base_url = "http://127.0.0.1:9/v1"

    return loop_config(tmp_path / "router.yaml", Unreached())  # type: ignore[arg-type]


def test_an_unreachable_postgres_store_says_why_at_once() -> None:
    pytest.importorskip("psycopg_pool")
    started = time.monotonic()
    result = modelrouter("stats", "--store", "postgresql://u:secret@127.0.0.1:1/x")
    assert time.monotonic() - started < 8  # the pool alone waited its 10 s timeout
    assert_clean_error(result, "postgresql://u:***@127.0.0.1:1/x: ", "Connection refused")
    assert len(result.stderr.splitlines()) == 1
    assert "pool" not in result.stderr and "secret" not in result.stderr
