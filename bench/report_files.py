"""Write a benchmark's JSON report and its picture into a results folder."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


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
