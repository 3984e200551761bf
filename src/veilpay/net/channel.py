"""A channel: typed messages over a pair of one-way byte streams to one peer.

Each direction is its own stream (a socket, TLS or not), so no TLS object is ever
read and written by two threads. Sends are queued to a writer thread, which is what
lets two parties send each other megabytes at the same time without deadlocking on
full socket buffers; receives run on the caller's thread with a deadline.
Every channel counts messages and bytes per statistics label.
"""

from __future__ import annotations

import contextlib
import queue
import select
import socket
import ssl
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from veilpay.errors import (
    InvalidInput,
    PeerDisconnected,
    ProtocolTimeout,
    WireFormatError,
)
from veilpay.net.wire import DTYPES, FIXED, HeaderError, check_shape, decode_fixed, encode_header

__all__ = ["Channel", "LinkStats", "Stream", "read_message", "write_message"]

_WRITE_CHUNK = 1 << 26  # below OpenSSL's INT_MAX write limit
DEFAULT_MAX_PAYLOAD = 1 << 36


class Stream(Protocol):
    def sendall(self, data: memoryview | bytes, /) -> None: ...
    def recv_into(self, buffer: memoryview, nbytes: int = 0, /) -> int: ...
    def settimeout(self, value: float | None, /) -> None: ...
    def close(self) -> None: ...


@dataclass
class LinkStats:
    messages_sent: int = 0
    bytes_sent: int = 0
    messages_recv: int = 0
    bytes_recv: int = 0


_SMALL = 1 << 16  # a message this small goes in one write (one frame, one system call)


def write_message(stream: Stream, header: bytes, arr: np.ndarray) -> None:
    view = memoryview(arr.reshape(-1).view(np.uint8)) if arr.size else memoryview(b"")  # type: ignore[arg-type]
    if len(view) <= _SMALL:
        stream.sendall(header + view.tobytes())
        return
    stream.sendall(header)
    for pos in range(0, len(view), _WRITE_CHUNK):
        stream.sendall(view[pos : pos + _WRITE_CHUNK])


def _read_exact(stream: Stream, peer: str, view: memoryview, deadline: float) -> None:
    pos = 0
    n = len(view)
    while pos < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ProtocolTimeout(peer, "no message before the deadline")
        stream.settimeout(remaining)
        try:
            got = stream.recv_into(view[pos:], min(n - pos, _WRITE_CHUNK))
        except TimeoutError as exc:
            raise ProtocolTimeout(peer, "no message before the deadline") from exc
        except ssl.SSLError as exc:
            raise WireFormatError(peer, f"TLS record error: {exc}") from exc
        except OSError as exc:
            raise PeerDisconnected(peer, f"connection lost: {exc}") from exc
        if got == 0:
            raise PeerDisconnected(peer, "connection closed by peer")
        pos += got


def read_message(
    stream: Stream, peer: str, session: bytes, label: str, seq: int, deadline: float,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
) -> tuple[np.ndarray, int]:
    """Read one message that must be number ``seq`` of ``session`` and carry ``label``;
    returns the array and the bytes read."""
    fixed = bytearray(FIXED.size)
    _read_exact(stream, peer, memoryview(fixed), deadline)
    try:
        code, got_seq, got_session, label_len, ndim, payload_len, _ = decode_fixed(bytes(fixed))
    except HeaderError as exc:
        raise WireFormatError(peer, str(exc)) from exc
    if got_session != session:
        raise WireFormatError(peer, "message from another session")
    if got_seq != seq:
        raise WireFormatError(peer, f"message {got_seq} out of order (expected {seq})")
    if payload_len > max_payload:
        raise WireFormatError(peer, f"payload of {payload_len} bytes exceeds the limit")
    rest = bytearray(label_len + 8 * ndim)
    _read_exact(stream, peer, memoryview(rest), deadline)
    try:
        got_label = bytes(rest[:label_len]).decode()
    except UnicodeDecodeError as exc:
        raise WireFormatError(peer, "label is not UTF-8") from exc
    if got_label != label:
        raise WireFormatError(peer, f"expected step {label!r}, got {got_label!r}")
    shape = tuple(int(v) for v in np.frombuffer(bytes(rest[label_len:]), dtype="<u8"))
    dtype = DTYPES[code]
    try:
        check_shape(dtype, shape, payload_len)
    except HeaderError as exc:
        raise WireFormatError(peer, str(exc)) from exc
    out = np.empty(shape, dtype=dtype)
    if payload_len:
        _read_exact(stream, peer, memoryview(out.reshape(-1).view(np.uint8)), deadline)  # type: ignore[arg-type]
    return out, FIXED.size + len(rest) + payload_len


class Channel:
    """Messages to and from one peer. ``send`` does not copy: do not mutate a sent array."""

    def __init__(
        self,
        me: str,
        peer: str,
        out_stream: Stream,
        in_stream: Stream,
        session: bytes,
        timeout: float = 60.0,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        first_seq: int = 0,
    ) -> None:
        if len(session) != 16:
            raise InvalidInput("a session id is 16 bytes")
        self.me = me
        self.peer = peer
        self.session = session
        self.timeout = timeout
        self.max_payload = max_payload
        self.stats: dict[str, LinkStats] = defaultdict(LinkStats)
        self._out = out_stream
        self._in = in_stream
        self._send_seq = first_seq
        self._recv_seq = first_seq
        self._queue: queue.Queue[tuple[bytes, np.ndarray] | None] = queue.Queue()
        self._queued = 0  # bytes handed to the writer thread and not yet written
        self._drained = threading.Condition()
        self._send_error: BaseException | None = None
        self._closed = False
        self._wlock = threading.Lock()  # one write on the stream at a time: the writer's or a direct one
        self._writer = threading.Thread(target=self._write_loop, name=f"send-{me}->{peer}", daemon=True)
        self._writer.start()

    def __repr__(self) -> str:
        return f"Channel({self.me!r} <-> {self.peer!r})"

    # -- sending -------------------------------------------------------------
    def send(self, label: str, array: np.ndarray, stat: str | None = None) -> None:
        self._raise_send_error()
        if self._closed:
            raise PeerDisconnected(self.peer, "channel is closed")
        arr = array if array.flags.c_contiguous else array.copy(order="C")
        header = encode_header(arr, self._send_seq, self.session, label)
        self._send_seq += 1
        s = self.stats[stat or label]
        s.messages_sent += 1
        s.bytes_sent += len(header) + arr.nbytes
        # A small message with nothing queued ahead of it is written here, sparing a thread
        # hand-off per message (MPC rounds are many small messages); large ones go through
        # the writer thread, so that a party sending a large array can still receive.
        if arr.nbytes <= _SMALL and self._queue.unfinished_tasks == 0 and self._wlock.acquire(blocking=False):
            try:
                write_message(self._out, header, arr)
                return
            except (OSError, ValueError) as exc:
                self._send_error = exc
                raise PeerDisconnected(self.peer, f"sending failed: {exc}") from exc
            finally:
                self._wlock.release()
        with self._drained:
            self._queued += len(header) + arr.nbytes
        self._queue.put((header, arr))

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None or self._send_error is not None:
                    if item is None:
                        return
                    continue
                with self._wlock:
                    write_message(self._out, *item)
            except (OSError, ValueError) as exc:
                self._send_error = exc
            finally:
                if item is not None:
                    with self._drained:
                        self._queued -= len(item[0]) + item[1].nbytes
                        self._drained.notify_all()
                self._queue.task_done()

    def drain_below(self, limit: int, timeout: float | None = None) -> None:
        """Wait until at most ``limit`` bytes of earlier messages wait to be written: a
        party that only sends (semi2k's dealer) cannot run ahead of its peers by more
        than that, holding every message it has made in memory."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        with self._drained:
            while self._queued > limit:
                self._raise_send_error()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ProtocolTimeout(self.peer, "the peer stopped reading: queued messages were not written")
                self._drained.wait(min(left, 1.0))

    def _raise_send_error(self) -> None:
        if self._send_error is not None:
            raise PeerDisconnected(self.peer, f"sending failed: {self._send_error}") from self._send_error

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every queued message has been written."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while self._queue.unfinished_tasks > 0:
            self._raise_send_error()
            if time.monotonic() > deadline:
                raise ProtocolTimeout(self.peer, "queued messages were not written in time")
            time.sleep(0.001)
        self._raise_send_error()

    # -- receiving -----------------------------------------------------------
    def recv(self, label: str, stat: str | None = None, timeout: float | None = None) -> np.ndarray:
        """The next message, which must carry ``label``; the timeout covers the whole message."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        out, nbytes = read_message(
            self._in, self.peer, self.session, label, self._recv_seq, deadline, self.max_payload
        )
        self._recv_seq += 1
        s = self.stats[stat or label]
        s.messages_recv += 1
        s.bytes_recv += nbytes
        return out

    def peer_hung_up(self) -> bool:
        """True when the peer has closed its end (its process died) and nothing it sent
        is left unread: a look at the socket, without reading or waiting. For a link
        that is idle while each party works alone (a partitioned PSI run's driver link),
        so a dead peer is noticed before any timeout."""
        raw = self._in if isinstance(self._in, socket.socket) else getattr(self._in, "_raw", None)
        if not isinstance(raw, socket.socket) or getattr(self._in, "buffered", lambda: False)():
            return False
        try:
            readable, _, _ = select.select([raw], [], [], 0)
            if not readable:
                return False
            return raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:  # reset by the peer, or closed here
            return True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._writer.join(timeout=self.timeout)
        for stream in (self._out, self._in):
            with contextlib.suppress(OSError):
                stream.close()

