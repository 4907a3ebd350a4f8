"""Check the files a command will write, before it works (``train``, ``route``, ``export``...).

A path found wrong only when the results are written would waste the run (for ``label``,
paid calls), and an output that is one of the inputs would overwrite the data it was
computed from.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from pathlib import Path


def same_file(a: Path, b: Path) -> bool:
    """Return whether two paths name one file (or would, once written)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): compare where they would be
        pass
    try:
        return a.resolve() == b.resolve()
    except (OSError, RuntimeError):  # a symlink loop: opening it will say so
        return False


def unwritable(
    outputs: Sequence[tuple[str, Path]], inputs: Sequence[tuple[str, Path]]
) -> str | None:
    """Return why an output cannot be written (``PATH: reason``), or None if all can.

    ``outputs`` are (option, path) pairs; ``inputs`` are (what, path) pairs, ``what``
    completing "PATH: is the ...".
    """
    for i, (option, out) in enumerate(outputs):
        if out.is_dir():
            return f"{out}: {os.strerror(errno.EISDIR)}"
        parent = out.parent
        if not parent.is_dir():
            missing = errno.ENOENT if not parent.exists() else errno.ENOTDIR
            return f"{out}: {os.strerror(missing)}"
        if not os.access(parent, os.W_OK | os.X_OK):
            return f"{out}: {os.strerror(errno.EACCES)}"
        for what, path in inputs:
            if same_file(out, path):
                return f"{out}: is the {what}: choose another {option}"
        for other_option, other in outputs[:i]:
            if same_file(out, other):
                return f"{out}: is also the {other_option} file: choose another {option}"
    return None
