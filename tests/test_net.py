from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest

from veilpay.errors import PeerDisconnected, ProtocolTimeout, WireFormatError
from veilpay.net import Channel, local_mesh
from veilpay.net.channel import read_message
from veilpay.net.wire import FIXED, encode_header

SESSION = b"0123456789abcdef"


class OneByteStream:
    """Delivers a byte string one byte per read: fragmentation at every boundary."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def recv_into(self, buf: memoryview, nbytes: int = 0) -> int:
        if self.pos >= len(self.data):
            return 0
        buf[0] = self.data[self.pos]
        self.pos += 1
        return 1

    def settimeout(self, value: float | None) -> None:
        pass

    def sendall(self, data: bytes) -> None:
        raise OSError

    def close(self) -> None:
        pass


def _frame(arr: np.ndarray, seq: int = 0, label: str = "op", session: bytes = SESSION) -> bytes:
    return encode_header(arr, seq, session, label) + arr.tobytes()


@pytest.mark.parametrize(
    "arr",
    [np.arange(7, dtype=np.uint64), np.array(5, dtype=np.uint64), np.zeros((0, 3), np.uint64),
     np.arange(24, dtype=np.int64).reshape(2, 3, 4), np.frombuffer(b"hello", dtype=np.uint8)],
)
def test_fragmented_stream_decodes(arr: np.ndarray) -> None:
    got, n = read_message(OneByteStream(_frame(arr)), "p", SESSION, "op", 0, time.monotonic() + 5)
    assert got.shape == arr.shape and got.dtype == arr.dtype and np.array_equal(got, arr)
    assert n == len(_frame(arr))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"XX" + bytes(FIXED.size - 2), "magic"),
        (_frame(np.arange(3, dtype=np.uint64))[:2] + b"\x09" + _frame(np.arange(3, dtype=np.uint64))[3:], "version"),
        (_frame(np.arange(3, dtype=np.uint64), label="other"), "expected step"),
        (_frame(np.arange(3, dtype=np.uint64), seq=4), "out of order"),
        (_frame(np.arange(3, dtype=np.uint64), session=b"x" * 16), "another session"),
    ],
)
def test_garbage_is_a_wire_format_error(data: bytes, message: str) -> None:
    with pytest.raises(WireFormatError, match=message) as info:
        read_message(OneByteStream(data), "mallory", SESSION, "op", 0, time.monotonic() + 5)
    assert info.value.peer == "mallory"


def test_payload_length_must_match_shape() -> None:
    arr = np.arange(3, dtype=np.uint64)
    header = bytearray(encode_header(arr, 0, SESSION, "op"))
    FIXED.pack_into(header, 0, b"VP", 1, 1, 0, SESSION, 2, 1, 0, 999)
    with pytest.raises(WireFormatError, match="does not match"):
        read_message(OneByteStream(bytes(header) + arr.tobytes()), "p", SESSION, "op", 0, time.monotonic() + 5)


def test_truncated_message_is_a_disconnect() -> None:
    data = _frame(np.arange(100, dtype=np.uint64))[:-5]
    with pytest.raises(PeerDisconnected):
        read_message(OneByteStream(data), "p", SESSION, "op", 0, time.monotonic() + 5)


def test_silence_times_out() -> None:
    a, b = socket.socketpair()
    ch = Channel("me", "slow", a, b, SESSION, timeout=0.2)
    t0 = time.monotonic()
    with pytest.raises(ProtocolTimeout) as info:
        ch.recv("op")
    assert info.value.peer == "slow" and time.monotonic() - t0 < 2
    ch.close()


def test_big_simultaneous_exchange_and_stats() -> None:
    comms = local_mesh(["a", "b"], timeout=20)
    x = np.arange(1 << 21, dtype=np.uint64)  # 16 MiB each way at once: needs the writer thread
    out: dict[str, np.ndarray] = {}

    def run(me: str, other: str) -> None:
        out[me] = comms[me].exchange("swap", {other: [x + (me == "b")]}, {other: 1})[other][0]

    ts = [threading.Thread(target=run, args=p) for p in (("a", "b"), ("b", "a"))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert np.array_equal(out["a"], x + 1) and np.array_equal(out["b"], x)
    s = comms["a"].stats()["swap"]
    assert s.rounds == 1 and s.messages_sent == 1
    assert s.bytes_sent == x.nbytes + FIXED.size + len("swap") + 8
    for c in comms.values():
        c.close()


def test_peer_close_is_a_disconnect() -> None:
    comms = local_mesh(["a", "b"], timeout=5)
    comms["b"].close()
    with pytest.raises(PeerDisconnected):
        comms["a"].exchange("x", {}, {"b": 1})
    comms["a"].close()


def test_a_party_that_only_sends_cannot_run_far_ahead(monkeypatch: pytest.MonkeyPatch) -> None:
    """semi2k's dealer only sends: without a bound it queued every triple of a whole
    training job in memory (18 GB on SBA). A round starts only when at most MAX_QUEUED
    bytes of earlier rounds still wait to be written to that peer."""
    import veilpay.net.communicator as communicator

    limit, size, rounds = 1 << 20, 1 << 19, 24
    monkeypatch.setattr(communicator, "MAX_QUEUED", limit)
    mesh = local_mesh(["dealer", "p"])
    peak = []

    def dealer() -> None:
        comm = mesh["dealer"]
        for i in range(rounds):
            comm.exchange(f"r{i}", {"p": [np.zeros(size // 8, dtype=np.uint64)]})
            peak.append(comm.channels["p"]._queued)  # noqa: SLF001 - what it holds in memory
        comm.channels["p"].flush()

    t = threading.Thread(target=dealer)
    t.start()
    time.sleep(0.3)  # the receiver is slow to start: the dealer must wait, not pile up
    got = [mesh["p"].exchange(f"r{i}", recv={"dealer": 1})["dealer"][0] for i in range(rounds)]
    t.join(10)
    assert len(got) == rounds and all(g.nbytes == size for g in got)
    assert max(peak) <= limit + 2 * size  # the bound, plus this round's message
    for comm in mesh.values():
        comm.close()
