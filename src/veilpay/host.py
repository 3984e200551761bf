"""Process settings that make numpy work fast on the machine it runs on.

Two things can cost veilpay's party processes more than their arithmetic:
- glibc returns freed big buffers to the OS, so the next array of the same size is
  fresh memory, and on a VM the first touch of each page costs microseconds;
- OpenBLAS (numpy's BLAS) reads ``OPENBLAS_CORETYPE`` from the environment. Some
  machines pin it (e.g. to the AVX2 "Haswell" kernels, for the same float bits on
  every host) even where the CPU has AVX-512 kernels that run a GEMM about 1.6x
  faster. `ring_matmul` is exact integer arithmetic in float64, so its results do
  not depend on the kernel; a caller may lift the pin for party processes.

`keep_freed_memory` acts on this process at once; `return_freed_memory` hands glibc's
free heap pages back to the OS once, after a step (ingestion) whose peak is past;
`blas_env` edits the environment of a child process (OpenBLAS reads it only when
numpy is first imported).

`FASTAPI_TELEMETRY_OFF` is for the HTTP services: they export Prometheus metrics
and JSON logs, not OpenTelemetry, and FastAPI's native OpenTelemetry hooks, left
on, ask the global OTel providers on every request whether they are configured.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from veilpay.errors import InvalidInput

if TYPE_CHECKING:
    from fastapi.telemetry import TelemetryConfig

__all__ = ["BLAS_CHOICES", "FASTAPI_TELEMETRY_OFF", "blas_env", "keep_freed_memory", "return_freed_memory"]

# FastAPI(telemetry=...): no OpenTelemetry spans, metrics or logs from FastAPI itself.
FASTAPI_TELEMETRY_OFF: Final[TelemetryConfig] = {"tracing": False, "metrics": False, "logs": False}

BLAS_CHOICES = ("inherit", "auto")


def keep_freed_memory(largest: int = 1 << 30, kept: int = 1 << 30) -> None:
    """Ask glibc to keep freed big buffers for reuse instead of returning them to the
    OS: blocks up to ``largest`` bytes come from the heap (bigger ones are mapped and
    given back when freed), and up to ``kept`` bytes of free heap stay. Process-wide:
    meant for party processes that free and allocate arrays of the same sizes over and
    over, which then skip the page faults of fresh memory (the cost: up to ``kept``
    bytes of freed memory counted in the RSS)."""
    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(-3, largest)  # M_MMAP_THRESHOLD: blocks up to this from the heap
        libc.mallopt(-1, kept)  # M_TRIM_THRESHOLD: keep up to this much free
        libc.mallopt(-8, 1)  # M_ARENA_MAX: one heap for every thread, so no thread keeps its own free memory
    except (OSError, AttributeError):
        return


def return_freed_memory() -> None:
    """Ask glibc to hand its free heap pages back to the OS now (``malloc_trim(0)``),
    for a process that just freed the temporaries of a big step and goes on to need
    the memory elsewhere; kept memory otherwise stays counted in its RSS. A no-op
    without glibc."""
    try:  # the symbols already loaded (libc among them): find_library would run ldconfig
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS, Windows): nothing to trim
        return
    trim(0)


def blas_env(environ: Mapping[str, str], choice: str) -> dict[str, str]:
    """A child process's environment: ``inherit`` keeps ``OPENBLAS_CORETYPE`` as it is;
    ``auto`` drops it, so OpenBLAS picks the kernels for the CPU it finds."""
    if choice not in BLAS_CHOICES:
        raise InvalidInput(f"unknown BLAS choice {choice!r}: choose one of {', '.join(BLAS_CHOICES)}")
    env = dict(environ)
    if choice == "auto":
        env.pop("OPENBLAS_CORETYPE", None)
    return env
