"""A throwaway PostgreSQL cluster for the benches (``bench/db.py``, ``bench/gateway.py``),
started as tests/conftest.py's ``postgres_server`` fixture does it: initdb from
/usr/lib/postgresql/*/bin (or ``initdb`` on PATH), trust auth, a socket in a temp dir,
``-c fsync=off`` (commits do not wait on the disk), the server run as ``postgres``
through ``runuser`` when we are root. It runs on this machine and its cores; the CPU it
spends is read from /proc (``server_cpu_s``).

The benches are run as scripts (``python bench/db.py``), so they import this module as
``_pg`` (the script's folder is first on ``sys.path``)."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["pg_bindir", "postgres_server", "server_cpu_s"]


def pg_bindir() -> Path | None:
    """The newest installed server's bin folder, or None."""
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(d, "initdb").exists():
            return Path(d)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


@contextlib.contextmanager
def postgres_server(settings: dict[str, str] | None = None) -> Iterator[tuple[str, int]]:
    """Start a cluster; yield its URL (database ``postgres``, user ``veilpay``) and the
    postmaster's pid; stop it (immediate) and delete it afterwards. ``settings``: more
    ``-c name=value`` server options (e.g. ``shared_preload_libraries``)."""
    bindir = pg_bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin, initdb on PATH)")
    root = Path(tempfile.mkdtemp(prefix="veilpay-bench-pg-"))
    data = root / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        root.chmod(0o755)
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    extra = "".join(f" -c {k}={v}" for k, v in (settings or {}).items())
    try:
        subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "veilpay"],
                       check=True, capture_output=True)
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-o",
                        f"-p {port} -c listen_addresses=127.0.0.1 -k {root} -c fsync=off{extra}", "start"],
                       check=True, capture_output=True)
        pid = int((data / "postmaster.pid").read_text().split()[0])
        yield f"postgresql+psycopg://veilpay@127.0.0.1:{port}/postgres", pid
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int | str) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()   # fields from the 3rd (state) on


def server_cpu_s(postmaster: int) -> float:
    """CPU seconds of the postmaster, its live children and (cutime/cstime) the children
    it has reaped."""
    top = _stat(postmaster)
    if top is None:
        return float("nan")
    ticks = sum(int(x) for x in top[11:15])   # utime stime cutime cstime
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = _stat(d)
            if st is not None and st[1] == str(postmaster):
                ticks += int(st[11]) + int(st[12])
    return ticks / _TICKS
