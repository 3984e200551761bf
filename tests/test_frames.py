"""AES-256-GCM frames after the TLS hello: veilpay.crypto.frames and veilpay.net.frames."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import load_vectors, send_async

from veilpay.crypto.frames import FrameCipher, FrameOpenError, frame_key
from veilpay.errors import ConfigError, PeerDisconnected, ProtocolTimeout, WireFormatError
from veilpay.net import load_network, provision_network
from veilpay.net.channel import read_message
from veilpay.net.frames import FRAME_MAX, FrameStream
from veilpay.net.tcp import connect_mesh
from veilpay.net.wire import encode_header

SESSION = bytes(range(16))
KEY = frame_key(bytes(range(32)), SESSION, "p0", "p1")


@pytest.mark.parametrize("case", ["gcm-spec-tc13.txt", "gcm-spec-tc14.txt"])
def test_frame_zero_matches_the_gcm_known_answers(case: str) -> None:
    (v,) = load_vectors(f"aes_gcm/{case}")
    assert v["IV"] == "00" * 12  # frame 0's nonce
    plain = bytes.fromhex(v["PLAINTEXT"])
    out = bytearray(len(plain))
    tag = FrameCipher(bytes.fromhex(v["KEY"])).seal_into(b"", memoryview(plain), memoryview(out))
    assert out.hex() == v["CIPHERTEXT"]
    assert tag.hex() == v["TAG"]
    back = bytearray(len(out))
    FrameCipher(bytes.fromhex(v["KEY"])).open_into(b"", memoryview(out), tag, memoryview(back))
    assert bytes(back) == plain


def test_frame_keys_are_bound_to_direction_session_and_secret() -> None:
    secret = bytes(range(32))
    keys = {frame_key(secret, SESSION, "p0", "p1"), frame_key(secret, SESSION, "p1", "p0"),
            frame_key(secret, bytes(16), "p0", "p1"), frame_key(bytes(32), SESSION, "p0", "p1")}
    assert len(keys) == 4


def test_frames_open_only_in_order_and_unaltered() -> None:
    seal = FrameCipher(KEY)
    frames = []
    for i in range(3):
        data = bytes([i]) * 100
        out = bytearray(100)
        tag = seal.seal_into(b"h", memoryview(data), memoryview(out))
        frames.append((out, tag))
    opener = FrameCipher(KEY)
    buf = bytearray(100)
    opener.open_into(b"h", memoryview(frames[0][0]), frames[0][1], memoryview(buf))
    assert bytes(buf) == bytes(100)
    with pytest.raises(FrameOpenError):  # frame 2 where frame 1 is due
        opener.open_into(b"h", memoryview(frames[2][0]), frames[2][1], memoryview(buf))
    late = FrameCipher(KEY)
    late.open_into(b"h", memoryview(frames[0][0]), frames[0][1], memoryview(buf))
    with pytest.raises(FrameOpenError):  # other additional data (a changed length)
        late.open_into(b"x", memoryview(frames[1][0]), frames[1][1], memoryview(buf))


@pytest.fixture
def link() -> Iterator[tuple[FrameStream, FrameStream, socket.socket]]:
    """(sender, receiver, the sender's raw socket) over a real loopback connection."""
    srv = socket.create_server(("127.0.0.1", 0))
    a = socket.create_connection(srv.getsockname())
    b, _ = srv.accept()
    srv.close()
    sender = FrameStream(a, FrameCipher(KEY), "p1")
    receiver = FrameStream(b, FrameCipher(KEY), "p0")
    yield sender, receiver, a
    sender.close()
    receiver.close()


@pytest.mark.parametrize("size", [0, 1, FRAME_MAX - 1, FRAME_MAX, FRAME_MAX + 1, (3 << 20) + 7])
def test_messages_of_any_size_arrive_intact(link: tuple[FrameStream, FrameStream, socket.socket], size: int) -> None:
    sender, receiver, _ = link
    rng = np.random.default_rng(size)
    arrays = [rng.integers(0, 256, size=size, dtype=np.uint8), rng.integers(0, 2**63, size=5, dtype=np.uint64)]
    threads = [send_async(sender, encode_header(arr, i, SESSION, "x"), arr) for i, arr in enumerate(arrays[:1])]
    got, nbytes = read_message(receiver, "p0", SESSION, "x", 0, time.monotonic() + 10)
    for t in threads:
        t.join(10)
    t2 = send_async(sender, encode_header(arrays[1], 1, SESSION, "y"), arrays[1])
    got2, _ = read_message(receiver, "p0", SESSION, "y", 1, time.monotonic() + 10)
    t2.join(10)
    assert np.array_equal(got, arrays[0]) and np.array_equal(got2, arrays[1])
    assert nbytes >= size


def test_short_reads_are_served_from_one_opened_frame(link: tuple[FrameStream, FrameStream, socket.socket]) -> None:
    sender, receiver, _ = link
    data = bytes(range(256)) * 40
    sender.sendall(data)
    receiver.settimeout(5)
    got = bytearray()
    while len(got) < len(data):
        buf = bytearray(7)
        n = receiver.recv_into(memoryview(buf), 7)
        assert 0 < n <= 7
        got += buf[:n]
    assert bytes(got) == data


def _raw_frame(cipher: FrameCipher, data: bytes) -> bytes:
    head = struct.pack("<I", len(data))
    out = bytearray(len(data))
    tag = cipher.seal_into(head, memoryview(data), memoryview(out))
    return head + tag + bytes(out)


def test_an_altered_frame_is_a_wire_format_error(link: tuple[FrameStream, FrameStream, socket.socket]) -> None:
    _, receiver, raw = link
    frame = bytearray(_raw_frame(FrameCipher(KEY), b"hello world"))
    frame[-1] ^= 1
    raw.sendall(frame)
    with pytest.raises(WireFormatError, match="authentication"):
        read_message(receiver, "p0", SESSION, "x", 0, time.monotonic() + 5)


def test_a_replayed_frame_is_a_wire_format_error(link: tuple[FrameStream, FrameStream, socket.socket]) -> None:
    _, receiver, raw = link
    frame = _raw_frame(FrameCipher(KEY), b"abcdefgh")
    raw.sendall(frame + frame)
    receiver.settimeout(5)
    buf = bytearray(8)
    assert receiver.recv_into(memoryview(buf), 8) == 8 and bytes(buf) == b"abcdefgh"
    with pytest.raises(WireFormatError, match="authentication"):
        receiver.recv_into(memoryview(buf), 8)


def test_a_frame_under_another_key_is_a_wire_format_error(link: tuple[FrameStream, FrameStream, socket.socket]) -> None:
    _, receiver, raw = link
    raw.sendall(_raw_frame(FrameCipher(frame_key(bytes(32), SESSION, "p0", "p1")), b"abcdefgh"))
    receiver.settimeout(5)
    with pytest.raises(WireFormatError, match="authentication"):
        receiver.recv_into(memoryview(bytearray(8)), 8)


def test_an_oversized_frame_length_is_refused_before_reading(link: tuple[FrameStream, FrameStream, socket.socket]) -> None:
    _, receiver, raw = link
    raw.sendall(struct.pack("<I", FRAME_MAX + 1) + bytes(16))
    receiver.settimeout(5)
    with pytest.raises(WireFormatError, match="exceeds"):
        receiver.recv_into(memoryview(bytearray(8)), 8)


def test_a_peer_that_closes_mid_frame_is_a_disconnect(link: tuple[FrameStream, FrameStream, socket.socket]) -> None:
    _, receiver, raw = link
    frame = _raw_frame(FrameCipher(KEY), bytes(1000))
    raw.sendall(frame[:500])
    raw.shutdown(socket.SHUT_WR)
    with pytest.raises(PeerDisconnected):
        read_message(receiver, "p0", SESSION, "x", 0, time.monotonic() + 5)


def test_silence_times_out_at_the_deadline(link: tuple[FrameStream, FrameStream, socket.socket]) -> None:
    _, receiver, raw = link
    raw.sendall(_raw_frame(FrameCipher(KEY), bytes(10))[:12])  # a frame that never completes
    t0 = time.monotonic()
    with pytest.raises(ProtocolTimeout):
        read_message(receiver, "p0", SESSION, "x", 0, time.monotonic() + 0.5)
    assert time.monotonic() - t0 < 2.0


def test_bytes_read_before_the_switch_are_read_first() -> None:
    a, b = socket.socketpair()
    try:
        frames = _raw_frame(FrameCipher(KEY), b"first") + _raw_frame_after(b"second")
        cut = 9  # the first frame's head and part of its tag were read with the hello
        a.sendall(frames[cut:])
        receiver = FrameStream(b, FrameCipher(KEY), "p0", frames[:cut])
        receiver.settimeout(5)
        buf = bytearray(6)
        assert receiver.recv_into(memoryview(buf), 6) == 5 and bytes(buf[:5]) == b"first"
        assert receiver.recv_into(memoryview(buf), 6) == 6 and bytes(buf) == b"second"
    finally:
        a.close()
        b.close()


def _raw_frame_after(data: bytes) -> bytes:
    """Frame 1 of KEY's stream."""
    cipher = FrameCipher(KEY)
    _raw_frame(cipher, b"")
    return _raw_frame(cipher, data)


def _mesh(net_files: dict[str, Path], timeout: float) -> dict[str, object]:
    session = bytes(16)
    results: dict[str, object] = {}

    def run(p: str) -> None:
        try:
            comm = connect_mesh(load_network(net_files[p]), p, session, timeout=5, connect_timeout=timeout)
            peer = "p1" if p == "p0" else "p0"
            arr = np.arange(300_000, dtype=np.uint64) * (1 if p == "p0" else 3)
            got = comm.exchange("x", {peer: [arr]}, {peer: 1})
            results[p] = got[peer][0]
            comm.close()
        except Exception as exc:  # noqa: BLE001 - reported to the test
            results[p] = exc

    threads = [threading.Thread(target=run, args=(p,)) for p in ("p0", "p1")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 10)
    return results


@pytest.mark.tcp
@pytest.mark.parametrize("records", ["frames", "tls"])
def test_mesh_moves_data_in_either_records_mode(tmp_path: Path, records: str) -> None:
    net = provision_network(tmp_path, ["p0", "p1"], base_port=_port_base(), records=records)
    assert load_network(net).records == records
    got = _mesh({"p0": net, "p1": net}, 10)
    assert np.array_equal(got["p0"], np.arange(300_000, dtype=np.uint64) * 3)  # type: ignore[arg-type]
    assert np.array_equal(got["p1"], np.arange(300_000, dtype=np.uint64))  # type: ignore[arg-type]


@pytest.mark.tcp
def test_parties_with_different_records_modes_do_not_connect(tmp_path: Path) -> None:
    net = provision_network(tmp_path, ["p0", "p1"], base_port=_port_base())
    other = tmp_path / "tls.toml"
    other.write_text(net.read_text().replace('records = "frames"', 'records = "tls"'))
    got = _mesh({"p0": net, "p1": other}, 2.0)
    assert isinstance(got["p0"], ProtocolTimeout) and isinstance(got["p1"], ProtocolTimeout)


def test_an_unknown_records_mode_is_a_config_error(tmp_path: Path) -> None:
    net = provision_network(tmp_path, ["p0", "p1"])
    net.write_text(net.read_text().replace('records = "frames"', 'records = "plain"'))
    with pytest.raises(ConfigError, match="records"):
        load_network(net)


def _port_base() -> int:
    from veilpay.cli.demo import _free_port_base

    return _free_port_base()
