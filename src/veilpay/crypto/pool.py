"""A pool of blinding worker processes (`python -m veilpay.crypto._blind_worker`),
started once per session and fed batches of 32-byte points: the `cryptography`
bindings hold the GIL during a scalar multiplication, so threads do not help. A
worker gets the curve and key once, then framed batches of raw bytes on stdin, and
answers raw bytes on stdout; nothing pickled crosses."""

from __future__ import annotations

import contextlib
import queue
import struct
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, Protocol

import numpy as np

from veilpay.crypto.points import POINT, InvalidPointError
from veilpay.errors import InvalidInput

__all__ = ["Blinder", "BlindingPool"]


class Blinder(Protocol):
    """A secret scalar on one curve (1: X25519, 2: P-256) that raises 32-byte points."""

    curve_id: int

    def raw(self) -> bytes: ...
    def check(self, points: np.ndarray) -> None: ...
    def _blind_bytes(self, data: bytes, start: int) -> bytes: ...


def _array(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8).reshape(-1, POINT)


def _read_exactly(pipe: IO[bytes], n: int) -> bytes:
    data = pipe.read(n)
    if data is None or len(data) != n:
        raise RuntimeError("blinding worker exited early")
    return data


class BlindingPool:
    """Blinds batches of points with one key on ``workers`` worker processes, started
    once and reused (``workers=0``: on a thread of this process). ``submit`` returns a
    future; batches run in the order submitted, up to ``workers`` at a time."""

    def __init__(self, key: Blinder, workers: int) -> None:
        if workers < 0:
            raise InvalidInput("workers must be >= 0")
        self._key = key
        self._idle: queue.SimpleQueue[subprocess.Popen[bytes]] = queue.SimpleQueue()
        self._procs: list[subprocess.Popen[bytes]] = []
        self._exec = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="blind")
        try:
            for _ in range(workers):
                proc = subprocess.Popen([sys.executable, "-m", "veilpay.crypto._blind_worker"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
                self._procs.append(proc)
                if proc.stdin is None:
                    raise RuntimeError("worker has no stdin")
                proc.stdin.write(bytes([key.curve_id]) + key.raw())
                proc.stdin.flush()
                self._idle.put(proc)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> BlindingPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, points: np.ndarray, start: int = 0) -> Future[np.ndarray]:
        """Blind ``points``; ``start`` offsets the index an InvalidPointError reports."""
        self._key.check(points)
        if not self._procs:
            return self._exec.submit(self._local, points, start)
        return self._exec.submit(self._remote, np.ascontiguousarray(points), start)

    def _local(self, points: np.ndarray, start: int) -> np.ndarray:
        return _array(self._key._blind_bytes(points.tobytes(), start))

    def _remote(self, points: np.ndarray, start: int) -> np.ndarray:
        proc = self._idle.get()
        try:
            if proc.stdin is None or proc.stdout is None:
                raise RuntimeError("worker has no pipes")
            proc.stdin.write(struct.pack("<Q", len(points)))
            proc.stdin.write(points.tobytes())
            proc.stdin.flush()
            status, value = struct.unpack("<BQ", _read_exactly(proc.stdout, 9))
            if status == 3:
                raise InvalidPointError(start + value, "small-order point (all-zero result)")
            if status != 0 or value != len(points):
                raise RuntimeError(f"blinding worker answered status {status}")
            return _array(_read_exactly(proc.stdout, value * POINT))
        finally:
            self._idle.put(proc)

    def close(self) -> None:
        self._exec.shutdown(wait=True, cancel_futures=True)
        for proc in self._procs:
            if proc.stdin is not None and not proc.stdin.closed:
                with contextlib.suppress(OSError):
                    proc.stdin.close()  # EOF: the worker exits
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        self._procs.clear()
