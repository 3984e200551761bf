"""The demo job: three wallets learn the network's weekly total and average payment
volume, and each learns whether it is above the average, without showing anyone its
own figures. Runs as three OS processes over mutual TLS on loopback (aby3)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from veilpay.mpc import Protocol, share, stack

# Daily cross-border payment volume, thousands of USD, one week (embedded default).
DEFAULT_VOLUMES = {
    "wallet-a": [1204.5, 1310.25, 1188.0, 1420.75, 1502.0, 1633.5, 1290.0],
    "wallet-b": [860.0, 912.5, 1005.25, 998.0, 1120.75, 1240.0, 1011.5],
    "wallet-c": [2140.0, 2011.25, 1987.5, 2210.0, 2305.75, 2422.0, 2119.25],
}


def wallet_volumes(rt: Protocol, volumes: list[float] | None = None) -> dict[str, Any]:
    """Every wallet runs this. Only ``volumes`` of this party is private input."""
    wallets = list(rt.compute)
    days = 7
    weekly = [share(rt, w, volumes if rt.me == w else None, shape=(days,)).sum() for w in wallets]
    totals = stack(weekly)
    network_total = totals.sum()
    # 3 * mine > total compares integers scaled alike: no truncation, no rounding.
    above = (totals * len(wallets)) > network_total
    total = float(network_total.reveal())  # type: ignore[arg-type]
    mine = None
    for i, w in enumerate(wallets):
        r = above[i].reveal(to=w)
        if r is not None:
            mine = bool(r)
    stats = rt.comm.total()
    return {
        "party": rt.me,
        "own_input_days": None if volumes is None else len(volumes),
        "learned_network_total": round(total, 4),
        "learned_network_average": round(total / len(wallets), 4),
        "learned_above_average": mine,
        "bytes_sent": stats.bytes_sent,
        "bytes_received": stats.bytes_recv,
        "rounds": stats.rounds,
    }


def run_demo(out: Path | None = None) -> dict[str, Any]:
    from veilpay.cli.launch import launch
    from veilpay.net import provision_network

    work = Path(out) if out else Path(tempfile.mkdtemp(prefix="veilpay-demo-"))
    net = provision_network(work, list(DEFAULT_VOLUMES), base_port=_free_port_base())
    args = {p: {"volumes": v} for p, v in DEFAULT_VOLUMES.items()}
    results = launch(str(net), "veilpay.cli.demo:wallet_volumes", "aby3", args)
    plain = {p: float(np.sum(v)) for p, v in DEFAULT_VOLUMES.items()}
    total = sum(plain.values())
    print("veilpay demo: three wallets, aby3 over mutual TLS 1.3, one OS process each")
    print(f"network file and certificates: {work}")
    for party, seen in results.items():
        print(f"\n[{party}] kept private: its 7 daily volumes")
        print(f"[{party}] saw: {json.dumps(seen)}")
    check_total = abs(results["wallet-a"]["learned_network_total"] - total) < 1e-2
    check_above = all(results[p]["learned_above_average"] == (plain[p] * 3 > total) for p in plain)
    print(f"\nplaintext check (run here only because the demo owns all the data): total ok={check_total}, "
          f"above-average ok={check_above}")
    if not (check_total and check_above):
        raise SystemExit("demo result disagrees with the plaintext computation")
    return results


def _free_port_base(count: int = 4) -> int:
    """A base port with ``count`` consecutive free ports, below the kernel's ephemeral
    range (32768 and up on Linux), so that no outgoing connection takes one of them
    between this check and the servers' bind."""
    import secrets
    import socket

    for _ in range(200):
        base = 20000 + secrets.randbelow(12000 - count)
        try:
            socks = []
            for port in range(base, base + count):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return base
    raise OSError("no free ports between 20000 and 32000")
