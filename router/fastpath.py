"""Select the compiled fast path, or its pure-Python twin.

``MODELROUTER_NO_EXTENSIONS=1`` or a non-CPython interpreter forces the twin; so does an
install where the extension could not be built. ``IMPLEMENTATION`` says which one runs.
"""

from __future__ import annotations

import os
import sys
from typing import Literal, cast

from router import _fastpath_py

Implementation = Literal["compiled", "python"]

NO_EXTENSIONS = bool(os.environ.get("MODELROUTER_NO_EXTENSIONS")) or (
    sys.implementation.name != "cpython"
)

FastPath: type[_fastpath_py.FastPath]
IMPLEMENTATION: Implementation

if NO_EXTENSIONS:
    FastPath = _fastpath_py.FastPath
    IMPLEMENTATION = "python"
else:
    try:
        from router import _fastpath
    except ImportError:
        FastPath = _fastpath_py.FastPath
        IMPLEMENTATION = "python"
    else:
        # Not a subclass of the twin, but the same API (router/_fastpath.pyi).
        FastPath = cast("type[_fastpath_py.FastPath]", _fastpath.FastPath)
        IMPLEMENTATION = "compiled"

FEATURIZER_VERSION = _fastpath_py.FEATURIZER_VERSION
N_DENSE = _fastpath_py.N_DENSE
LEVELS = _fastpath_py.LEVELS
HEADS = _fastpath_py.HEADS
GAIN_HEAD = _fastpath_py.GAIN_HEAD
GATE_HEAD = _fastpath_py.GATE_HEAD
SCORE_PLACEMENT_GAIN = _fastpath_py.SCORE_PLACEMENT_GAIN
SCORE_LEVEL_GAIN = _fastpath_py.SCORE_LEVEL_GAIN
SCORE_GATED_LEVEL = _fastpath_py.SCORE_GATED_LEVEL

__all__ = [
    "FEATURIZER_VERSION",
    "GAIN_HEAD",
    "GATE_HEAD",
    "HEADS",
    "IMPLEMENTATION",
    "LEVELS",
    "N_DENSE",
    "SCORE_GATED_LEVEL",
    "SCORE_LEVEL_GAIN",
    "SCORE_PLACEMENT_GAIN",
    "FastPath",
]
