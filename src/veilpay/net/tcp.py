"""TCP with mutual TLS 1.3 between the parties of a network file.

Every ordered pair of parties has its own connection: a party connects to each peer
for what it sends and accepts one connection from each peer for what it receives.
The server requires a client certificate from the network CA; the client checks the
server's certificate names the peer id; the first message (the hello, inside TLS)
names the sender, which must equal the common name of its certificate, and the
session id. With the network's ``records = "frames"`` (the default) the hello also
carries a fresh 32-byte secret, and the link then leaves TLS for AES-256-GCM frames
keyed from it (`veilpay.net.frames`); with "tls" it stays on TLS records.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time

import numpy as np

from veilpay.crypto import client_context, peer_party, random_seed, server_context
from veilpay.crypto.frames import FrameCipher, frame_key
from veilpay.errors import (
    ConfigError,
    PeerAuthenticationError,
    PeerError,
    ProtocolTimeout,
    VeilpayError,
)
from veilpay.net.channel import Channel, read_message, write_message
from veilpay.net.communicator import Communicator
from veilpay.net.config import RECORDS, NetworkConfig
from veilpay.net.frames import FrameStream
from veilpay.net.tlsstream import TlsStream
from veilpay.net.wire import encode_header

__all__ = ["connect_mesh"]

log = logging.getLogger(__name__)
_HELLO = "hello"
_SECRET = 32


def _hello_payload(records: str, secret: bytes, me: str) -> np.ndarray:
    """The hello: the records mode (its index in RECORDS), the link secret (frames
    only) and the sender's id."""
    body = bytes([RECORDS.index(records)]) + (secret if records == "frames" else b"") + me.encode()
    return np.frombuffer(body, dtype=np.uint8)


def _parse_hello(payload: bytes, records: str) -> tuple[str, bytes]:
    """(claimed sender, link secret); ValueError if the hello is not for ``records``."""
    if not payload or payload[0] != RECORDS.index(records):
        raise ValueError("the peer's network file names another records mode")
    start = 1 + (_SECRET if records == "frames" else 0)
    if len(payload) <= start:
        raise ValueError("short hello")
    return payload[start:].decode(), payload[1:start]


def _leave_tls(tls: TlsStream, secret: bytes, session: bytes, sender: str, receiver: str, peer: str) -> FrameStream:
    """The link from ``sender`` to ``receiver`` after its hello: frames on the socket
    under the key both ends derive from the hello's secret."""
    raw, rest = tls.detach()
    return FrameStream(raw, FrameCipher(frame_key(secret, session, sender, receiver)), peer, rest)


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        srv.bind((host, port))
    except OSError as exc:
        srv.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc}") from exc
    srv.listen(16)
    return srv


def _tune(sock: socket.socket | TlsStream) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)


def connect_mesh(
    network: NetworkConfig,
    me: str,
    session: bytes,
    timeout: float = 60.0,
    connect_timeout: float = 30.0,
    parties: list[str] | None = None,
) -> Communicator:
    """Connect ``me`` to every other party (of ``parties``, default all in the file)."""
    parties = parties or network.party_ids
    if me not in network.parties:
        raise ConfigError(f"party {me!r} is not in network {network.name!r}")
    entry = network.parties[me]
    sctx = server_context(network.ca, entry.cert, entry.key)
    cctx = client_context(network.ca, entry.cert, entry.key)
    peers = [p for p in parties if p != me]
    deadline = time.monotonic() + connect_timeout
    records = network.records
    incoming: dict[str, TlsStream | FrameStream] = {}
    errors: list[BaseException] = []
    srv = _listen(entry.host, entry.port)

    stopped = threading.Event()

    def accept_loop() -> None:
        srv.settimeout(0.2)
        while len(incoming) < len(peers) and time.monotonic() < deadline and not stopped.is_set():
            try:
                raw, _addr = srv.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                errors.append(exc)
                return
            tls: TlsStream | None = None
            try:
                tls = TlsStream(raw, sctx, server_side=True)
                tls.do_handshake(max(time.monotonic() + 0.1, deadline))
                name = peer_party(tls)
                hello, _ = read_message(tls, name or "?", session, _HELLO, 0, deadline, max_payload=256)
                claimed, secret = _parse_hello(bytes(hello), records)
                if name is None or claimed != name or name not in peers or name in incoming:
                    log.warning("refused a connection whose certificate does not match a pending peer")
                    tls.close()
                    continue
                _tune(tls)
                if stopped.is_set():  # the mesh was given up while this one was shaking hands
                    tls.close()
                    return
                incoming[name] = _leave_tls(tls, secret, session, name, me, name) if records == "frames" else tls
            except (ssl.SSLError, OSError, VeilpayError, ValueError) as exc:
                # A stranger with no valid certificate does not stop the party. A hello
                # for another records mode says so (our own message, no peer data).
                why = str(exc) if isinstance(exc, ValueError) and not isinstance(exc, UnicodeDecodeError) else ""
                log.warning("refused an incoming connection: %s %s", type(exc).__name__, why)
                (tls or raw).close()  # the TLS stream owns the descriptor

    acceptor = threading.Thread(target=accept_loop, name=f"accept-{me}", daemon=True)
    acceptor.start()
    outgoing: dict[str, TlsStream | FrameStream] = {}
    try:
        for peer in peers:
            target = network.parties[peer]
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ProtocolTimeout(peer, f"could not connect within {connect_timeout:g} s")
                try:
                    raw = socket.create_connection((target.host, target.port), timeout=min(remaining, 5.0))
                except OSError:
                    time.sleep(0.05)
                    continue
                tls = TlsStream(raw, cctx, server_side=False, server_hostname=peer)
                try:
                    tls.do_handshake(deadline)
                except ssl.SSLError as exc:
                    tls.close()
                    raise PeerAuthenticationError(peer, f"TLS handshake refused: {exc.reason}") from exc
                except TimeoutError as exc:
                    tls.close()
                    raise ProtocolTimeout(peer, f"TLS handshake did not finish within {connect_timeout:g} s") from exc
                except OSError as exc:
                    # TLS 1.3 checks the client certificate after the client's
                    # Finished: a refusal shows up here as a reset connection.
                    tls.close()
                    raise PeerAuthenticationError(peer, f"peer refused the TLS handshake: {exc}") from exc
                if peer_party(tls) != peer:  # the network's CA vouches for the party its certificate names
                    tls.close()
                    raise PeerAuthenticationError(peer, "the certificate at its address names another party")
                _tune(tls)
                outgoing[peer] = tls
                break
            secret = random_seed()
            hello = _hello_payload(records, secret, me)
            try:
                write_message(tls, encode_header(hello, 0, session, _HELLO), hello)
                if records == "frames":
                    outgoing[peer] = _leave_tls(tls, secret, session, me, peer, peer)
            except OSError as exc:
                raise PeerError(peer, f"peer closed the connection during the hello: {exc}") from exc
        acceptor.join(timeout=max(0.0, deadline - time.monotonic()) + 0.5)
        if errors:
            raise ConfigError(f"listening socket failed: {errors[0]}")
        missing = [p for p in peers if p not in incoming]
        if missing:
            raise ProtocolTimeout(missing[0], f"did not connect within {connect_timeout:g} s")
    except BaseException:
        stopped.set()
        acceptor.join(timeout=1.0)
        for s in list(outgoing.values()) + list(incoming.values()):
            s.close()
        raise
    finally:
        srv.close()
    for sock in outgoing.values():
        # A send may wait for a busy peer to read as long as a receive may wait for a
        # message (the connect phase used a short timeout).
        sock.settimeout(timeout)
    channels = {p: Channel(me, p, outgoing[p], incoming[p], session, timeout, first_seq=1) for p in peers}
    return Communicator(me, parties, channels)

