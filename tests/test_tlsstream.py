"""veilpay.net.tlsstream: TLS through memory BIOs on real loopback sockets."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import send_async

from veilpay.crypto import client_context, peer_common_name, server_context
from veilpay.errors import PeerDisconnected, ProtocolTimeout, WireFormatError
from veilpay.net import load_network, provision_network
from veilpay.net.channel import read_message
from veilpay.net.tlsstream import TlsStream
from veilpay.net.wire import encode_header

SESSION = bytes(range(16))


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[TlsStream, TlsStream]]:
    """A connected (client, server) pair after a mutual TLS 1.3 handshake."""
    net = load_network(provision_network(tmp_path, ["p0", "p1"], base_port=0))
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    out: dict[str, TlsStream] = {}

    def serve() -> None:
        raw, _ = srv.accept()
        p1 = net.parties["p1"]
        s = TlsStream(raw, server_context(net.ca, p1.cert, p1.key), server_side=True)
        s.do_handshake(time.monotonic() + 10)
        out["server"] = s

    t = threading.Thread(target=serve)
    t.start()
    p0 = net.parties["p0"]
    client = TlsStream(socket.create_connection(("127.0.0.1", port)), client_context(net.ca, p0.cert, p0.key),
                       server_side=False, server_hostname="p1")
    client.do_handshake(time.monotonic() + 10)
    t.join(10)
    srv.close()
    server = out["server"]
    assert peer_common_name(server) == "p0"
    assert peer_common_name(client) == "p1"
    yield client, server
    client.close()
    server.close()


@pytest.mark.parametrize("size", [0, 1, 16383, 16385, (3 << 20) + 7])
def test_messages_of_any_size_arrive_intact(pair: tuple[TlsStream, TlsStream], size: int) -> None:
    client, server = pair
    arr = np.random.default_rng(size).integers(0, 256, size=size, dtype=np.uint8)
    t = send_async(client, encode_header(arr, 5, SESSION, "x"), arr)
    got, nbytes = read_message(server, "p0", SESSION, "x", 5, time.monotonic() + 10)
    t.join(10)
    assert np.array_equal(got, arr)
    assert nbytes >= size


def test_bytes_that_are_not_tls_records_are_a_wire_format_error(pair: tuple[TlsStream, TlsStream]) -> None:
    client, server = pair
    client._raw.sendall(b"\x17\x03\x03\x00\x40" + b"\xaa" * 64)  # an application-data record that fails its tag
    with pytest.raises(WireFormatError, match="TLS record error"):
        read_message(server, "p0", SESSION, "x", 0, time.monotonic() + 5)


def test_a_peer_that_closes_mid_message_is_a_disconnect(pair: tuple[TlsStream, TlsStream]) -> None:
    client, server = pair
    arr = np.arange(1 << 16, dtype=np.uint64)
    header = encode_header(arr, 0, SESSION, "x")
    client.sendall(header)
    client.sendall(memoryview(arr.view(np.uint8))[:1000])
    client.close()
    with pytest.raises(PeerDisconnected):
        read_message(server, "p0", SESSION, "x", 0, time.monotonic() + 5)


def test_silence_is_a_timeout(pair: tuple[TlsStream, TlsStream]) -> None:
    _, server = pair
    t0 = time.monotonic()
    with pytest.raises(ProtocolTimeout):
        read_message(server, "p0", SESSION, "x", 0, time.monotonic() + 0.5)
    assert time.monotonic() - t0 < 3


def test_a_silent_server_times_the_handshake_out(tmp_path: Path) -> None:
    net = load_network(provision_network(tmp_path, ["p0", "p1"], base_port=0))
    srv = socket.create_server(("127.0.0.1", 0))  # accepts (backlog) but never answers
    p0 = net.parties["p0"]
    client = TlsStream(socket.create_connection(("127.0.0.1", srv.getsockname()[1])),
                       client_context(net.ca, p0.cert, p0.key), server_side=False, server_hostname="p1")
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        client.do_handshake(time.monotonic() + 0.5)
    assert time.monotonic() - t0 < 3
    client.close()
    srv.close()
