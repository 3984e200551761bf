"""Running one SPMD program at every party: in threads (tests, one process) or as one
OS process per party over TCP + mutual TLS (``veilpay node``).

A program is a function ``program(rt, **kwargs)`` where ``rt`` is this party's
protocol runtime; it may return any JSON-serialisable value. The same function runs
unchanged under both launchers.
"""

from __future__ import annotations

import importlib
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from veilpay.crypto import label_digest
from veilpay.errors import ConfigError, InvalidInput, PartyFailed
from veilpay.mpc.aby3 import Aby3
from veilpay.mpc.fixedpoint import FixedPoint
from veilpay.mpc.protocol import Protocol
from veilpay.mpc.semi2k import Semi2k
from veilpay.net import Communicator, connect_mesh, load_network, local_mesh

__all__ = ["PROTOCOLS", "load_program", "make_protocol", "run_local", "run_party"]

PROTOCOLS = ("semi2k", "aby3")
Program = Callable[..., Any]


def make_protocol(
    name: str, comm: Communicator, compute: Sequence[str] | None = None, frac_bits: int = 16, trunc: str = "exact"
) -> Protocol:
    """semi2k: compute = (P0, P1, dealer); aby3: compute = (P0, P1, P2). Default: the
    first three parties of the network."""
    roles = list(compute or comm.parties[:3])
    fxp = FixedPoint(frac_bits)
    if name == "semi2k":
        if len(roles) != 3:
            raise InvalidInput("semi2k needs three roles: two compute parties and the dealer")
        return Semi2k(comm, roles[:2], roles[2], fxp, trunc=trunc)
    if name == "aby3":
        return Aby3(comm, roles, fxp, trunc)
    raise InvalidInput(f"unknown protocol {name!r}; choose one of {', '.join(PROTOCOLS)}")


def run_local(
    program: Program,
    protocol: str = "semi2k",
    parties: Sequence[str] = ("p0", "p1", "p2"),
    compute: Sequence[str] | None = None,
    frac_bits: int = 16,
    trunc: str = "exact",
    timeout: float = 30.0,
    kwargs: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run ``program`` at every party as threads over in-process channels.

    ``kwargs[party]`` are that party's private arguments. If a party raises, its
    channels close (so its peers fail fast instead of waiting for their timeout) and
    PartyFailed for the first party that failed is raised, chained to its error.
    """
    comms = local_mesh(list(parties), timeout=timeout)
    results: dict[str, Any] = {}
    failures: list[tuple[float, str, BaseException]] = []

    def body(me: str) -> None:
        comm = comms[me]
        try:
            with ring_errstate():
                rt = make_protocol(protocol, comm, compute, frac_bits, trunc)
                results[me] = program(rt, **(kwargs or {}).get(me, {}))
            comm.flush()
        except BaseException as exc:  # noqa: BLE001 - re-raised below with the party id
            failures.append((time.monotonic(), me, exc))
            comm.close()

    threads = [threading.Thread(target=body, args=(p,), name=f"party-{p}") for p in parties]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for comm in comms.values():
        comm.close()
    if failures:
        _, party, exc = min(failures, key=lambda f: f[0])
        raise PartyFailed(party, exc) from exc
    return results


def run_party(
    program: Program,
    network_file: str,
    me: str,
    protocol: str = "semi2k",
    session: bytes | None = None,
    compute: Sequence[str] | None = None,
    frac_bits: int = 16,
    trunc: str = "exact",
    timeout: float = 60.0,
    connect_timeout: float = 30.0,
    **kwargs: Any,
) -> Any:
    """Run ``program`` as party ``me`` of the network file, over TCP + TLS."""
    network = load_network(network_file)
    sess = session or _default_session(network.name)
    comm = connect_mesh(network, me, sess, timeout=timeout, connect_timeout=connect_timeout)
    try:
        with ring_errstate():
            rt = make_protocol(protocol, comm, compute, frac_bits, trunc)
            result = program(rt, **kwargs)
        comm.flush()
        return result
    finally:
        comm.close()


def ring_errstate() -> Any:
    """Wrap-around is the ring's arithmetic, not an error: silence numpy's overflow
    warnings (raised for 0-d operands) while a program runs."""
    return np.errstate(over="ignore")


def _default_session(name: str) -> bytes:
    return label_digest("veilpay/session/" + name)


def new_session() -> bytes:
    return secrets.token_bytes(16)


def load_program(ref: str) -> Program:
    """``package.module:function`` -> the function (a local import, never peer data)."""
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"program {ref!r} must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
        fn = getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load program {ref!r}: {exc}") from exc
    if not callable(fn):
        raise ConfigError(f"program {ref!r} is not callable")
    return fn  # type: ignore[no-any-return]
