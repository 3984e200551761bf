"""SecretFlow PSI (`spu.psi` in the spu 0.9.5 wheel) peer figures for bench/psi.py.
Runs in .venv-spu (not ours: pins clash). One OS process per rank over SPU's brpc link
on loopback (no TLS), reading the same CSV files as ours; rank 0 receives.

    .venv-spu/bin/python bench/peers/spu_psi.py --rank 0 --protocol ecdh --input r.csv \
        --output o.csv --ports 9101,9102

Prints one JSON line: the rank's seconds inside psi_execute and the counts.
"""

from __future__ import annotations

import argparse
import json
import time

import spu.libspu.link as link
import spu.psi as psi

PROTOCOLS = {"ecdh": psi.PsiProtocol.PROTOCOL_ECDH, "kkrt": psi.PsiProtocol.PROTOCOL_KKRT,
             "rr22": psi.PsiProtocol.PROTOCOL_RR22}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--protocol", choices=sorted(PROTOCOLS), required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--key", default="customer_id")
    ap.add_argument("--ports", required=True)
    a = ap.parse_args()
    desc = link.Desc()
    desc.id = f"bench-{a.protocol}"
    desc.recv_timeout_ms = 3600 * 1000
    for rank, port in enumerate(a.ports.split(",")):
        desc.add_party(f"p{rank}", f"127.0.0.1:{port}")
    lctx = link.create_brpc(desc, a.rank)
    conf = psi.PsiProtocolConfig(protocol=PROTOCOLS[a.protocol], receiver_rank=0, broadcast_result=False)
    if a.protocol == "ecdh":
        conf.ecdh_params.curve = psi.EllipticCurveType.CURVE_25519
    cfg = psi.PsiExecuteConfig(
        protocol_conf=conf,
        input_params=psi.InputParams(type=psi.SourceType.SOURCE_TYPE_FILE_CSV, path=a.input,
                                     selected_keys=[a.key], keys_unique=True),
        output_params=psi.OutputParams(type=psi.SourceType.SOURCE_TYPE_FILE_CSV, path=a.output,
                                       disable_alignment=True),
    )
    t0 = time.perf_counter()
    report = psi.psi_execute(cfg, lctx)
    seconds = time.perf_counter() - t0
    lctx.stop_link()
    print(json.dumps({"rank": a.rank, "protocol": a.protocol, "seconds": round(seconds, 3),
                      "original": report.original_count, "intersection": report.intersection_count}), flush=True)


if __name__ == "__main__":
    main()
