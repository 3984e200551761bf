"""TLS over a plain socket through memory BIOs, with big socket reads and writes.

An `ssl.SSLSocket` makes one or two system calls per TLS record (at most 16 KiB of
data): OpenSSL reads each record's 5-byte header and then its body, and writes each
record on its own. Moving tens of megabytes per protocol round, that costs about
as much CPU as the AES-GCM itself. Here OpenSSL works on memory buffers
(`ssl.MemoryBIO`): the socket is read and written in pieces of up to 1 MiB, and
records are sealed and opened in memory. The TLS session is the same (same context,
same certificate checks); only the plumbing differs.

Measured on loopback, CPU per MiB moved: sending 0.69 ms (SSLSocket) against
0.58 ms here, receiving 0.63 ms against 0.45 ms (AES-256-GCM itself: 0.22 ms).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from typing import Any

__all__ = ["TlsStream"]

_IO = 1 << 20  # bytes per socket read and per sealed write


class TlsStream:
    """One TLS connection on a connected socket; owns the socket from now on."""

    def __init__(self, raw: socket.socket, ctx: ssl.SSLContext, server_side: bool,
                 server_hostname: str | None = None) -> None:
        self._raw = raw
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = ctx.wrap_bio(self._incoming, self._outgoing, server_side=server_side,
                                 server_hostname=server_hostname)
        self._buf = bytearray(_IO)

    def __repr__(self) -> str:
        return f"TlsStream(fd={self._raw.fileno()})"

    def do_handshake(self, deadline: float) -> None:
        """Run the handshake; ssl.SSLError if it is refused, OSError (TimeoutError
        past ``deadline``) if the connection fails."""
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("TLS handshake did not finish in time") from None
                self._raw.settimeout(remaining)
                data = self._raw.recv(_IO)
                if not data:
                    raise ConnectionResetError("connection closed during the TLS handshake") from None
                self._incoming.write(data)
            except ssl.SSLError:
                with contextlib.suppress(OSError):
                    self._flush()  # the alert, so the peer learns why
                raise
        self._flush()

    def getpeercert(self) -> dict[str, Any] | None:
        return self._tls.getpeercert()

    def _flush(self) -> None:
        if self._outgoing.pending:
            self._raw.sendall(self._outgoing.read())

    # -- the Stream protocol of veilpay.net.channel ---------------------------------
    def sendall(self, data: memoryview | bytes, /) -> None:
        view = memoryview(data).cast("B")
        for pos in range(0, len(view), _IO):
            self._tls.write(view[pos : pos + _IO])
            self._flush()

    def recv_into(self, buffer: memoryview, nbytes: int = 0, /) -> int:
        """Up to ``nbytes`` of data, at least 1 byte; 0 once the peer has closed."""
        want = nbytes or len(buffer)
        got = 0
        while got < want:
            try:
                n = int(self._tls.read(want - got, buffer[got:]))  # type: ignore[call-overload]
            except ssl.SSLWantReadError:
                if got:
                    return got
                n_raw = self._raw.recv_into(self._buf)
                if n_raw == 0:
                    return 0
                self._incoming.write(memoryview(self._buf)[:n_raw])
                continue
            except ssl.SSLZeroReturnError:
                return got
            if n == 0:
                return got
            got += n
        return got

    def settimeout(self, value: float | None, /) -> None:
        self._raw.settimeout(value)

    def setsockopt(self, level: int, option: int, value: int, /) -> None:
        self._raw.setsockopt(level, option, value)

    def detach(self) -> tuple[socket.socket, bytes]:
        """Stop using TLS here: the socket, and the bytes already read from it past the
        last TLS record. ConnectionError if TLS data is still unread or unsent."""
        if self._tls.pending() or self._outgoing.pending:
            raise ConnectionError("TLS data is left on a link that leaves TLS")
        return self._raw, self._incoming.read()

    def buffered(self) -> bool:
        """True when bytes from the peer wait here, read from the socket but not yet
        handed out (sealed in the BIO, or opened by TLS)."""
        return self._incoming.pending > 0 or self._tls.pending() > 0

    def close(self) -> None:
        self._raw.close()
