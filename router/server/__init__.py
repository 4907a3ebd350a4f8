"""The gRPC server: build it (create_server), run it (serve). Protobuf stops here."""

from router.loading import ConfigSource
from router.server.app import RunningServer, create_server
from router.server.process import serve

__all__ = ["ConfigSource", "RunningServer", "create_server", "serve"]
