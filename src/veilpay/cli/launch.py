"""Start one ``veilpay node`` process per party and collect their JSON results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from veilpay.errors import ProtocolError
from veilpay.host import blas_env
from veilpay.mpc.runtime import new_session
from veilpay.net import load_network

_BLAS_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _blas_threads(n_parties: int) -> dict[str, str]:
    """All parties share this machine's cores: give each process its share of BLAS
    threads (OpenBLAS spins idle threads, so oversubscription costs more than it
    seems). A value the user set wins."""
    if any(v in os.environ for v in _BLAS_VARS):
        return {}
    share = str(max(1, (os.cpu_count() or 1) // max(1, n_parties)))
    return dict.fromkeys(_BLAS_VARS, share)


def launch(
    network_file: str,
    program: str,
    protocol: str,
    args: dict[str, dict[str, Any]] | None = None,
    parties: list[str] | None = None,
    compute: list[str] | None = None,
    trunc: str = "exact",
    timeout: float = 120.0,
    extra_env: dict[str, str] | None = None,
    blas: str = "inherit",
) -> dict[str, Any]:
    """Run ``program`` at every party; ``blas`` is `veilpay.host.blas_env`'s choice
    for the party processes."""
    network = load_network(network_file)
    parties = parties or network.party_ids
    session = new_session().hex()
    procs = {}
    env = {**blas_env(os.environ, blas), **_blas_threads(len(parties)), **(extra_env or {})}
    for p in parties:
        cmd = [
            sys.executable, "-m", "veilpay.cli.main", "node", "--network", network_file, "--party", p,
            "--program", program, "--protocol", protocol, "--session", session, "--trunc", trunc,
            "--args-json", json.dumps((args or {}).get(p, {})),
        ]
        if compute:
            cmd += ["--compute", ",".join(compute)]
        procs[p] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    results: dict[str, Any] = {}
    errors = []
    for p, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            errors.append(f"{p}: timed out")
            continue
        if proc.returncode != 0:
            errors.append(f"{p}: exit {proc.returncode}: {err.strip().splitlines()[-1] if err.strip() else ''}")
            continue
        results[p] = json.loads(out.strip().splitlines()[-1])
    if errors:
        raise ProtocolError("party processes failed: " + "; ".join(errors))
    return results
