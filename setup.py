"""Build the compiled fast path (when it can) and generate the gRPC code from protos/.

The extension needs only a C compiler: xxHash's header is vendored in third_party/xxhash/.
MODELROUTER_NO_EXTENSIONS=1, a non-CPython interpreter, a big-endian machine or a failed
compile install the pure-Python twin instead, and say so.
"""

import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_namespace_packages, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

HERE = Path(__file__).parent
XXHASH_DIR = "third_party/xxhash"
# The extension hashes uint64 pairs in native byte order; the twin packs them little-endian.
NO_EXTENSIONS = (
    bool(os.environ.get("MODELROUTER_NO_EXTENSIONS"))
    or sys.implementation.name != "cpython"
    or sys.byteorder != "little"
)


def banner(message: str) -> None:
    print(f"\n**********\n* modelrouter: {message}\n**********\n", file=sys.stderr)


def generate_protos() -> None:
    """Generate router/_proto/ from protos/ so modules import as router._proto.…"""
    protos = sorted(str(p.relative_to(HERE)) for p in (HERE / "protos").rglob("*.proto"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-Irouter/_proto=protos",
            "--python_out=.",
            "--pyi_out=.",
            "--grpc_python_out=.",
            *protos,
        ],
        cwd=HERE,
        check=True,
    )


class BuildPy(build_py):
    """Generate the gRPC code, then build with its packages included."""

    def run(self) -> None:
        generate_protos()
        # Package discovery ran before the generated packages existed (a fresh clone or an
        # sdist has none): add them, or a plain install and the wheel would lack them.
        generated = find_namespace_packages(where=str(HERE), include=["router._proto.*"])
        self.packages = sorted({*self.packages, *generated})
        self.distribution.packages = self.packages
        super().run()


class OptionalBuildExt(build_ext):
    """Build the extension, or fall back to the pure-Python twin with a banner."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # any build failure means "use the twin"
            banner(f"the compiled fast path was not built ({exc}); using the pure-Python twin")

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            banner(f"the compiled fast path was not built ({exc}); using the pure-Python twin")
        else:
            banner("built the compiled fast path (Cython + vendored xxHash)")


def extensions() -> list[Extension]:
    if NO_EXTENSIONS:
        banner(
            "MODELROUTER_NO_EXTENSIONS, a non-CPython interpreter or a big-endian machine: "
            "pure-Python twin only"
        )
        return []
    from Cython.Build import cythonize

    ext = Extension(
        "router._fastpath",
        ["router/_fastpath.pyx"],
        include_dirs=[XXHASH_DIR],
        depends=[f"{XXHASH_DIR}/xxhash.h"],
        # No FMA contraction: scores must match the twin bit for bit.
        extra_compile_args=["-O3", "-ffp-contract=off"],
    )
    return cythonize([ext], language_level=3, annotate=bool(os.environ.get("MODELROUTER_ANNOTATE")))


setup(ext_modules=extensions(), cmdclass={"build_py": BuildPy, "build_ext": OptionalBuildExt})
