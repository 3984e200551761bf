"""The gateway as it is served (``veilpay gateway serve``: uvicorn in its own process)
against clients that hold connections open without finishing a request: a declared
body trickled a byte a second, headers trickled and never finished, a connection that
sends nothing, and a kept-alive connection left idle. Each is closed at its deadline
(``veilpay.gateway.limits``), the gateway's file descriptors come back, and clients
that send whole requests are served meanwhile: one that keeps a connection busy past
every deadline keeps it."""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import time
from pathlib import Path

import httpx
import pytest

from veilpay.cli.localnet import LocalNet
from veilpay.gateway.limits import BODY_TIMEOUT_S, HEADERS_TIMEOUT_S, KEEP_ALIVE_S

pytestmark = pytest.mark.tcp

SLACK_S = 5.0  # a shared two-core machine; the deadlines themselves are 10 s
OPENING = {
    "body": b'POST /v1/payments/pay HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n'
            b'Content-Length: 1000\r\n\r\n{"a":',
    "headers": b"POST /v1/payments/pay HTTP/1.1\r\nHost: gw\r\nContent-Le",
    "idle": b"",
}
TRICKLE = {"body": b" ", "headers": b"n"}  # a byte a second, never the end of the body or the headers


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _settled_fds(pid: int) -> int:
    """The process's descriptor count once it has stayed the same for half a second (a
    connection the probes closed may not be closed at the server yet)."""
    seen = [-1]
    while len(seen) < 5 or len(set(seen[-5:])) > 1:
        time.sleep(0.1)
        seen.append(_fds(pid))
    return seen[-1]


def _until(cond: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _recv(s: socket.socket) -> bytes:
    data = s.recv(4096)
    if not data:
        raise AssertionError("the gateway closed the connection")
    return data


def _read_answer(s: socket.socket) -> bytes:
    """The head of one whole HTTP answer with a Content-Length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += _recv(s)
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    while len(rest) < length:
        rest += _recv(s)
    return head


def _ask(s: socket.socket) -> None:
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert _read_answer(s).startswith(b"HTTP/1.1 200")


def test_slow_clients_are_cut_off_and_their_descriptors_freed(tmp_path: Path) -> None:
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("counts the gateway's descriptors in /proc")
    with LocalNet(tmp_path) as net:
        net.start("gateway")
        pid, port, url = net.procs["gateway"].pid, net.ports["gateway"], net.url["gateway"]
        assert httpx.get(url + "/healthz").status_code == 200
        before = _settled_fds(pid)
        counts = {"body": 50, "headers": 10, "idle": 10}
        opened: dict[socket.socket, tuple[str, float]] = {}
        for kind, n in counts.items():
            for _ in range(n):
                t = time.monotonic()
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                s.sendall(OPENING[kind])
                opened[s] = (kind, t)
        keep = socket.create_connection(("127.0.0.1", port), timeout=5)
        keep.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        head = _read_answer(keep)
        assert head.startswith(b"HTTP/1.1 200") and b"connection: close" not in head.lower()  # kept alive
        opened[keep] = ("keep-alive", time.monotonic())
        held = sum(counts.values()) + 1
        _until(lambda: _fds(pid) >= before + held, 10, "the gateway to hold every connection")
        during = _fds(pid)
        with httpx.Client() as ok:  # whole requests are served meanwhile
            assert ok.get(url + "/healthz").status_code == 200
        busy = socket.create_connection(("127.0.0.1", port), timeout=5)  # a whole request every 2 s
        busy_since, ticks = time.monotonic(), 0

        deadline = {"body": BODY_TIMEOUT_S, "headers": HEADERS_TIMEOUT_S, "idle": HEADERS_TIMEOUT_S,
                    "keep-alive": KEEP_ALIVE_S}
        received = dict.fromkeys(opened, b"")
        closed: dict[socket.socket, float] = {}
        give_up = time.monotonic() + max(deadline.values()) + SLACK_S + 5
        trickled = time.monotonic()
        watch = selectors.DefaultSelector()  # epoll: select() stops at descriptor 1024
        for s in opened:
            watch.register(s, selectors.EVENT_READ)
        while len(closed) < len(opened) and time.monotonic() < give_up:
            live = [s for s in opened if s not in closed]
            readable = [key.fileobj for key, _ in watch.select(0.1)]
            for s in readable:
                assert isinstance(s, socket.socket)
                try:
                    data = s.recv(4096)
                except ConnectionResetError:
                    data = b""
                if data:
                    received[s] += data
                else:
                    closed[s] = time.monotonic() - opened[s][1]
                    watch.unregister(s)
            if time.monotonic() - trickled >= 1.0:
                trickled, ticks = time.monotonic(), ticks + 1
                if ticks % 2 == 0:
                    _ask(busy)
                for s in live:
                    if s not in closed and opened[s][0] in TRICKLE:
                        with contextlib.suppress(OSError):  # closed meanwhile
                            s.send(TRICKLE[opened[s][0]])
        watch.close()
        for s in opened:
            s.close()
        while time.monotonic() - busy_since < HEADERS_TIMEOUT_S + 2:  # still served, past every deadline
            time.sleep(1)
            _ask(busy)
        busy.close()
        assert len(closed) == len(opened), {k: sum(1 for s in opened if opened[s][0] == k and s not in closed)
                                            for k in deadline}
        for s, took in closed.items():
            kind = opened[s][0]
            assert deadline[kind] - 0.5 <= took <= deadline[kind] + SLACK_S, (kind, took)
        for s, data in received.items():
            if opened[s][0] == "body":  # answered, unsigned, and told the connection closes
                head, _, answer = data.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 408 ") and b"connection: close" in head.lower()
                assert b'"resultCode":"REQUEST_TIMEOUT"' in answer and b"signature" not in head.lower()
            else:
                assert data == b"", opened[s][0]
        _until(lambda: _fds(pid) <= before, 5, "the gateway's descriptors to come back")
        assert during >= before + held
