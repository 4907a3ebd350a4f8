"""Shared fixtures: both fast-path implementations, small real model files."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from router import _fastpath_py
from router.model import save_model
from tests.support import _fastpath_c, random_model


@pytest.fixture(params=["c", "py"])
def fastpath_impl(request: pytest.FixtureRequest) -> type[_fastpath_py.FastPath]:
    """Each fast-path implementation in turn: the compiled one and the pure-Python twin."""
    if request.param == "py":
        return _fastpath_py.FastPath
    if _fastpath_c is None:
        if os.environ.get("MODELROUTER_REQUIRE_EXTENSIONS"):
            pytest.fail("the compiled fast path was required but did not import")
        pytest.skip("compiled fast path not built")
    return _fastpath_c.FastPath  # type: ignore[no-any-return]


@pytest.fixture
def small_model_path(tmp_path: Path) -> Iterator[Path]:
    """A small real model file (random weights) saved to a temporary directory."""
    path = tmp_path / "small.npz"
    save_model(random_model(), path)
    yield path
