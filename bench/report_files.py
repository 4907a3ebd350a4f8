"""Write a benchmark's JSON report and its picture into a results folder; name the CPU."""

from __future__ import annotations

import json
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """Return the CPU's model name (/proc/cpuinfo), for the machine a result was measured on."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def write_report(
    out: Path, name: str, report: dict[str, Any], plot: Callable[[dict[str, Any], Path], None]
) -> None:
    """Write ``out/NAME.json`` and draw ``out/NAME.png`` (skipped without matplotlib)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=1))
    try:
        plot(report, out / f"{name}.png")
    except ImportError:
        print("matplotlib missing: no picture (pip install 'modelrouter[plot]')")
    print(f"wrote {out / name}.json in {report['seconds']} s")
