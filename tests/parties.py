"""Running several parties as threads over in-memory channels, collecting each one's
result or exception (a failing party closes its channels, as a dying process would)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from veilpay.net import Communicator, local_mesh


def run_threads(fns: Mapping[str, Callable[[Communicator], Any]], timeout: float = 60,
                join: float = 240) -> dict[str, Any]:
    mesh = local_mesh(list(fns), timeout=timeout)
    out: dict[str, Any] = {}

    def go(name: str) -> None:
        try:
            out[name] = fns[name](mesh[name])
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out[name] = exc
            mesh[name].close()  # as a dying process would: the peers see a disconnect

    threads = [threading.Thread(target=go, args=(p,)) for p in fns]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=join)
    for c in mesh.values():
        c.close()
    return out
