"""openmined-psi 2.0.6 peer figures for bench/psi.py. Runs in .venv-openmined (its
protobuf pin is not ours). openmined-psi is a library without a transport: both roles
run in this one process, one after the other, and the serialized protobuf messages
are what would cross the wire (their sizes are the bytes each way). Same CSV files.

    .venv-openmined/bin/python bench/peers/openmined_psi.py --receiver r.csv --sender s.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import time

import private_set_intersection.python as psi


def _ids(path: str) -> list[str]:
    with open(path, newline="") as fh:
        rows = csv.reader(fh)
        next(rows)
        return [r[0] for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--receiver", required=True)
    ap.add_argument("--sender", required=True)
    a = ap.parse_args()
    x, y = _ids(a.receiver), _ids(a.sender)
    t0 = time.perf_counter()
    client = psi.client.CreateWithNewKey(True)
    server = psi.server.CreateWithNewKey(True)
    setup = server.CreateSetupMessage(1e-9, len(x), y, psi.DataStructure.RAW)
    request = client.CreateRequest(x)
    response = server.ProcessRequest(request)
    common = client.GetIntersection(setup, response)
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": round(seconds, 3), "intersection": len(common),
                      "bytes_receiver_to_sender": len(request.SerializeToString()),
                      "bytes_sender_to_receiver": len(setup.SerializeToString()) + len(response.SerializeToString())}),
          flush=True)


if __name__ == "__main__":
    main()
