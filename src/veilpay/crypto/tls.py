"""TLS 1.3 contexts for party-to-party links. Both ends trust exactly one root, the
network's CA: the contexts are built empty and load only it, never the operating
system's trust store (an enterprise inspection root or any public CA in it could
otherwise stand in for a peer). Hostnames play no part: after the handshake the
caller checks that the peer's certificate names exactly the party it meant to reach
(``peer_party``: the certificate's ``veilpay:party:<id>`` URI name, or its common name
where an older certificate has none). Only ``ssl`` from the standard library is used."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, Protocol

from veilpay.errors import ConfigError

__all__ = ["PARTY_URI", "client_context", "peer_common_name", "peer_party", "server_context"]

PARTY_URI = "veilpay:party:"


def _base(protocol: int, ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(protocol)  # no default roots, unlike ssl.create_default_context
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        ctx.load_verify_locations(cafile=str(ca))
        ctx.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS material ({ca}, {cert}, {key}): {exc}") from exc
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def server_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    ctx = _base(ssl.PROTOCOL_TLS_SERVER, ca, cert, key)
    # Links are one-way streams: the client never reads, so send it no session tickets.
    ctx.num_tickets = 0
    return ctx


def client_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    ctx = _base(ssl.PROTOCOL_TLS_CLIENT, ca, cert, key)
    ctx.check_hostname = False  # the peer is named by its party id (peer_party), not by a host name
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


def peer_party(sock: _HasPeerCert) -> str | None:
    """The party id the verified peer certificate names: its one ``veilpay:party:<id>``
    URI name, or, for a certificate with none, its common name. None when it names no
    party, or more than one."""
    cert = sock.getpeercert()
    if not cert:
        return None
    uris = [str(v) for k, v in cert.get("subjectAltName", ()) if k == "URI" and str(v).startswith(PARTY_URI)]
    if len(uris) > 1:
        return None
    if uris:
        return uris[0][len(PARTY_URI):]
    return peer_common_name(sock)
