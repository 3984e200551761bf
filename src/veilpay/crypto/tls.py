"""TLS 1.3 contexts for party-to-party links: both ends present a certificate from the
network CA, and the client checks that the server's certificate names the party id
it meant to reach. Only ``ssl`` from the standard library is used here."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, Protocol

from veilpay.errors import ConfigError

__all__ = ["client_context", "peer_common_name", "server_context"]


def _base(purpose: ssl.Purpose, ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        ctx.load_verify_locations(cafile=str(ca))
        ctx.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS material ({ca}, {cert}, {key}): {exc}") from exc
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def server_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    ctx = _base(ssl.Purpose.CLIENT_AUTH, ca, cert, key)
    # Links are one-way streams: the client never reads, so send it no session tickets.
    ctx.num_tickets = 0
    return ctx


def client_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    ctx = _base(ssl.Purpose.SERVER_AUTH, ca, cert, key)
    ctx.check_hostname = True
    return ctx


class _HasPeerCert(Protocol):
    def getpeercert(self) -> dict[str, Any] | None: ...


def peer_common_name(sock: _HasPeerCert) -> str | None:
    """The common name of the verified peer certificate, or None."""
    cert = sock.getpeercert()
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:  # type: ignore[str-unpack]
            if key == "commonName":
                return str(value)
    return None
