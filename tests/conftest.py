from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

VECTORS = Path(__file__).parent / "vectors"


def load_vectors(relpath: str) -> list[dict[str, str]]:
    """KEY = VALUE blocks; a line starting with '#' is a comment; one block per file
    for the RFC files, one entry per line for value tables (key, value)."""
    entries: list[dict[str, str]] = []
    block: dict[str, str] = {}
    for line in (VECTORS / relpath).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        block[key.strip()] = value.strip()
    entries.append(block)
    return entries


def load_table(relpath: str) -> list[tuple[str, str]]:
    rows = []
    for line in (VECTORS / relpath).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            rows.append((key.strip(), value.strip()))
    return rows


def load_json_vectors(relpath: str) -> list[dict[str, str]]:
    """The ``vectors`` list of a JSON vector file."""
    import json

    return json.loads((VECTORS / relpath).read_text())["vectors"]


# ---------------------------------------------------------------- PostgreSQL
# The gateway's storage and API tests also run against a real PostgreSQL server: a
# throwaway cluster that this fixture creates with the server binaries on the machine
# (.ci/run installs them). Without them the PostgreSQL cases skip, unless
# VEILPAY_REQUIRE_POSTGRES=1 (set by CI) turns the skip into a failure.

import contextlib  # noqa: E402
import gc  # noqa: E402
import glob  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import uuid  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Iterator  # noqa: E402

import pytest  # noqa: E402


def _pg_bindir() -> Path | None:
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(d, "initdb").exists():
            return Path(d)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    bindir = _pg_bindir()
    if bindir is None:
        if os.environ.get("VEILPAY_REQUIRE_POSTGRES") == "1":
            pytest.fail("PostgreSQL server binaries not found and VEILPAY_REQUIRE_POSTGRES=1")
        pytest.skip("PostgreSQL server binaries not installed")
    root = Path(tempfile.mkdtemp(prefix="veilpay-pg-"))
    data = root / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        root.chmod(0o755)
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "veilpay"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-o",
                    f"-p {port} -c listen_addresses=127.0.0.1 -k {root} -c fsync=off", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://veilpay@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty database on the session's server."""
    from sqlalchemy import create_engine, text

    name = "t_" + uuid.uuid4().hex[:12]
    admin = create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield postgres_server.rsplit("/", 1)[0] + "/" + name
    finally:
        # The in-process apps' connection pools outlive the test (nothing disposes them);
        # close their connections to this database here, or the collector finds them open
        # in whichever later test it runs in and warns there.
        import psycopg

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
            for obj in gc.get_objects():
                if isinstance(obj, psycopg.Connection) and not obj.closed:
                    with contextlib.suppress(Exception):
                        if obj.info.dbname == name:
                            obj.close()
        with admin.connect() as c, contextlib.suppress(Exception):
            c.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
        admin.dispose()


@pytest.fixture
def utc_midday(monkeypatch: pytest.MonkeyPatch) -> str:
    """A clock that reads 12:00 UTC of today when the test starts and runs on from
    there, for tests that settle or sum "today" (a UTC day): the day they ask about is
    the day their payments were made in, even when the suite runs across midnight.
    Whatever reads ``time.time()`` sees it: the gateway, the SDK, the partners, the
    nodes and their clock in tests/gateway_net.py. ``datetime.now()`` and an
    argument-less ``time.gmtime()`` do not, so a test takes its day from here or from
    ``time.time()``. Returns that day, YYYY-MM-DD."""
    import time

    real = time.time
    start = real()
    shift = start - start % 86_400 + 43_200 - start
    monkeypatch.setattr(time, "time", lambda: real() + shift)
    return time.strftime("%Y-%m-%d", time.gmtime(start + shift))


def send_async(stream: Any, header: bytes, arr: np.ndarray) -> threading.Thread:
    """Write one message on a thread (a test's receiver reads it on the main one)."""
    from veilpay.net.channel import write_message

    t = threading.Thread(target=write_message, args=(stream, header, arr))
    t.start()
    return t
