"""The log configuration: JSON lines with pid and worker, a fast ISO timestamp."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest
import structlog

from router.config import Logging
from router.server.logs import IsoTimestamp, configure_logging, set_worker


def test_iso_timestamp_matches_structlogs_format_and_the_clock() -> None:
    stamp = IsoTimestamp()
    for _ in range(3):
        before = dt.datetime.now(dt.UTC)
        value = stamp(None, "info", {})["timestamp"]
        after = dt.datetime.now(dt.UTC)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", value)
        parsed = dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
        assert before <= parsed <= after


def test_json_lines_carry_level_time_pid_and_worker(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        configure_logging(Logging(level="info", format="json"))
        set_worker(3)
        structlog.get_logger().info("rpc", method="Route", score=0.5)
        structlog.get_logger().debug("hidden")
        [line] = capsys.readouterr().out.splitlines()
        entry = json.loads(line)
        assert entry["event"] == "rpc" and entry["level"] == "info"
        assert entry["worker"] == 3 and isinstance(entry["pid"], int)
        assert (entry["method"], entry["score"]) == ("Route", 0.5)
    finally:
        set_worker(None)
        structlog.reset_defaults()
