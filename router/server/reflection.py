"""Server reflection that also resolves method names, as ghz asks for them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_reflection.v1alpha import reflection


class MethodResolvingPool:
    """A descriptor pool whose FindFileContainingSymbol also accepts ``pkg.Service.Method``.

    The reflection protocol allows method names as symbols and ghz asks for exactly that
    (``modelrouter.v1.ModelRouter.Route``), but the upb pool behind grpcio-reflection only
    finds messages, enums, services and fields. Everything else goes to the wrapped pool.
    """

    def __init__(self, pool: descriptor_pool.DescriptorPool | None = None) -> None:
        self._pool = descriptor_pool.Default() if pool is None else pool

    def FindFileContainingSymbol(self, symbol: str) -> FileDescriptor:
        """Return the file declaring symbol; raise KeyError when nothing does."""
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            return self._pool.FindMethodByName(symbol).containing_service.file

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


def enable_server_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serve reflection for service_names, resolving method symbols too."""
    # The upb DescriptorPool cannot be subclassed; the wrapper has the methods reflection uses.
    pool = cast(descriptor_pool.DescriptorPool, MethodResolvingPool())
    reflection.enable_server_reflection(tuple(service_names), server, pool=pool)
