"""The process helpers: flags over the configuration, the port reservation."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from router.config import ConfigError
from router.server.process import ConfigSource, reserve_port
from tests.integration.server.support import make_model, write_config


def test_flags_override_the_file(tmp_path: Path) -> None:
    make_model(tmp_path / "m.npz")
    path = write_config(tmp_path / "c.yaml", tmp_path / "m.npz", server={"port": 7000})
    assert ConfigSource(path).load().server.port == 7000
    config = ConfigSource(path, host="127.0.0.1", port=0, workers=2).load()
    assert (config.server.host, config.server.port, config.server.workers) == ("127.0.0.1", 0, 2)
    assert ConfigSource(path).base_dir == tmp_path
    assert ConfigSource().load().tiers[0].backend == "demo"
    with pytest.raises(ConfigError, match="cannot read"):
        ConfigSource(tmp_path / "missing.yaml").load()


def test_reserved_port_is_shared_with_reuseport_sockets() -> None:
    held = reserve_port("127.0.0.1", 0)
    port = held.getsockname()[1]
    try:
        worker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        worker.bind(("127.0.0.1", port))
        worker.listen()
        worker.close()
        plain = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with pytest.raises(OSError):
            plain.bind(("127.0.0.1", port))
        plain.close()
    finally:
        held.close()
