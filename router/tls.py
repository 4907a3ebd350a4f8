"""TLS and mutual TLS on the gRPC port, with certificates that SIGHUP reloads in place.

The server's credentials are grpc's dynamic SSL credentials: grpc asks ``ServerTls`` before
every new handshake whether the certificates changed, so a reload swaps them for new
connections while the open ones carry on untouched. Whether a client certificate is
required is fixed when the server is built (a restart changes it).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from router.config import ConfigError, TlsConfig

PEM_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"
PEM_KEY_END = b"PRIVATE KEY-----"


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The PEM bytes of a certificate chain, its key and the client CA bundle (empty: none)."""

    cert: bytes
    key: bytes
    client_ca: bytes

    @property
    def mutual(self) -> bool:
        return bool(self.client_ca)


def _path(name: str, base_dir: Path | None) -> Path:
    path = Path(name)
    return base_dir / path if not path.is_absolute() and base_dir is not None else path


def _read(key: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}") from None


def read_tls(config: TlsConfig, key: str, base_dir: Path | None = None) -> TlsFiles:
    """Read and check the files of a TLS configuration; ``key`` names it in errors."""
    cert_path, key_path = _path(config.cert, base_dir), _path(config.key, base_dir)
    cert, private = _read(f"{key}.cert", cert_path), _read(f"{key}.key", key_path)
    if PEM_CERTIFICATE not in cert:
        raise ConfigError(f"{key}.cert: {cert_path} holds no PEM certificate")
    if PEM_KEY_END not in private:
        raise ConfigError(f"{key}.key: {key_path} holds no PEM private key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert_path, key_path)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"{key}.key: {key_path} is not the private key of {cert_path} ({exc.reason or exc})"
        ) from None
    client_ca = b""
    if config.client_ca:
        ca_path = _path(config.client_ca, base_dir)
        client_ca = _read(f"{key}.client_ca", ca_path)
        try:
            context.load_verify_locations(cafile=ca_path)
        except ssl.SSLError as exc:
            raise ConfigError(
                f"{key}.client_ca: {ca_path} holds no PEM CA certificate ({exc.reason or exc})"
            ) from None
    return TlsFiles(cert, private, client_ca)


def _certificate_configuration(files: TlsFiles) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration(
        [(files.key, files.cert)], root_certificates=files.client_ca or None
    )


class ServerTls:
    """The gRPC port's credentials; ``update`` swaps the certificates for new connections."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._pending: grpc.ServerCertificateConfiguration | None = None

    def credentials(self) -> grpc.ServerCredentials:
        """Return dynamic credentials that pick up every ``update`` at the next handshake."""
        return grpc.dynamic_ssl_server_credentials(
            _certificate_configuration(self.files),
            self._fetch,  # type: ignore[arg-type]  # grpc-stubs: None means no change
            require_client_authentication=self.files.mutual,
        )

    def update(self, files: TlsFiles) -> None:
        """Serve new connections with these certificates (open ones keep theirs)."""
        self.files = files
        self._pending = _certificate_configuration(files)

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        # Called by grpc before every handshake (on its own thread): None keeps the
        # current certificates, so the new ones are handed over once.
        pending, self._pending = self._pending, None
        return pending


def metrics_ssl_context(files: TlsConfig, base_dir: Path | None = None) -> ssl.SSLContext:
    """Return the server-side SSL context of the metrics port (client certificates if a CA)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    load_metrics_certificates(context, files, base_dir)
    return context


def load_metrics_certificates(
    context: ssl.SSLContext, files: TlsConfig, base_dir: Path | None = None
) -> None:
    """Load (or reload: new handshakes use them) the metrics port's certificates."""
    read_tls(files, "server.metrics_tls", base_dir)  # the checks and their messages
    context.load_cert_chain(_path(files.cert, base_dir), _path(files.key, base_dir))
    if files.client_ca:
        context.load_verify_locations(cafile=_path(files.client_ca, base_dir))
        context.verify_mode = ssl.CERT_REQUIRED
