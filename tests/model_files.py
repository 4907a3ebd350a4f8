"""Take model files apart and put them back together, to make corrupt and mismatched ones."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

Arrays = dict[str, npt.NDArray[Any]]


def read_raw(path: Path) -> tuple[dict[str, Any], Arrays]:
    """Return the meta (with its checksum) and the arrays of a model file, unverified."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    meta = json.loads(arrays.pop("meta").tobytes().decode())
    return meta, arrays


def checksum_of(meta: dict[str, Any], arrays: Arrays) -> str:
    """Return the checksum as router/model.py documents it: SHA-256 of canonical meta + arrays."""
    h = hashlib.sha256(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode())
    for key in sorted(arrays):
        h.update(key.encode())
        h.update(np.ascontiguousarray(arrays[key]).tobytes())
    return h.hexdigest()


def write_raw(path: Path, meta: dict[str, Any], arrays: Arrays, *, reseal: bool) -> Path:
    """Write a model file from parts; ``reseal`` recomputes the checksum (another writer's file)."""
    meta = dict(meta)
    if reseal:
        meta.pop("checksum", None)
        meta["checksum"] = checksum_of(meta, arrays)
    return write_entries(
        path, {"meta": np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays}
    )


def write_entries(path: Path, entries: Arrays) -> Path:
    """Write arrays as the entries of an .npz file (any entries: whole, missing or odd)."""
    with path.open("wb") as fh:
        # numpy's stub reads a ** mapping as possibly its allow_pickle flag.
        np.savez_compressed(fh, **entries)  # type: ignore[arg-type]
    return path
