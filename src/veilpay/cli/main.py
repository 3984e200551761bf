"""``veilpay``: keys, node, launch, demo, psi, psi-setup, train, score, gateway, partner, risk, mcp."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from veilpay.errors import ConfigError, GatewayUnavailable, InvalidInput, VeilpayError
from veilpay.host import BLAS_CHOICES


def _cmd_keys(a: argparse.Namespace) -> int:
    if a.kind in ("authority", "certify", "monitor"):
        return _cmd_authority(a)
    if a.kind != "network":
        return _cmd_party_keys(a)
    from veilpay.net import provision_network

    parties = [p.strip() for p in a.parties.split(",") if p.strip()]
    path = provision_network(a.out, parties, host=a.host, base_port=a.base_port, name=a.name)
    print(f"wrote CA, {len(parties)} party certificates and {path}")
    return 0


def _cmd_authority(a: argparse.Namespace) -> int:
    """``authority``: a network's key authority and its empty log; ``certify``: the
    authority certifies entries (appends them to its log, signs the head, writes each
    certificate into its file); ``monitor``: a party watches the log for entries in its
    own name that are not its own."""
    from veilpay.sdk.authority import certify, create_authority

    if a.kind == "authority":
        create_authority(a.out, a.name)
        print(f"wrote {a.out}/authority.json (pin it at every party), {a.out}/secret.json (mode 0600: keep it "
              f"offline) and an empty log in {a.out}/log/")
        return 0
    if a.kind == "certify":
        for e in a.entry:
            print(json.dumps(certify(a.authority, e)))
        return 0
    return _monitor(a)


def _monitor(a: argparse.Namespace) -> int:
    """Exit 0: the log is consistent and holds no entry that would take this party's
    place; 1: it holds one (listed in ``foreign``)."""
    from pathlib import Path

    import httpx

    from veilpay.sdk import load_party
    from veilpay.sdk.authority import load_authority
    from veilpay.sdk.keys import PublicEntry
    from veilpay.sdk.monitor import watch

    state = Path(a.state) if a.state else Path(a.keys) / "log-state.json"
    nodes = []
    for path in a.node_key:
        try:
            nodes.append(PublicEntry.from_json(json.loads(Path(path).read_text())))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    try:
        report = watch(a.gateway_url, load_party(a.keys), load_authority(a.authority), state, nodes=nodes)
    except httpx.HTTPError as exc:
        raise GatewayUnavailable(f"{a.gateway_url}: {type(exc).__name__}") from exc
    print(json.dumps(report, indent=1))
    return 1 if report["foreign"] else 0


def _cmd_party_keys(a: argparse.Namespace) -> int:
    from veilpay.sdk import create_party, retire_key, rotate_keys

    if a.kind in ("partner", "gateway"):
        role = "gateway" if a.kind == "gateway" else a.role
        keys = create_party(a.out, a.id, role, endpoint=getattr(a, "endpoint", None) or "",
                            notify_url=getattr(a, "notify_url", None) or "",
                            code_prefixes=[p for p in (getattr(a, "code_prefix", None) or "").split(",") if p],
                            suite=a.suite, region=getattr(a, "region", None) or "",
                            notify_batch_url=getattr(a, "notify_batch_url", None) or "")
        print(f"wrote {a.out}/public.json and {a.out}/secret.json (mode 0600) for {role} {keys.id!r}; have the key "
              "authority certify public.json (veilpay keys certify)")
    elif a.kind == "rotate":
        print(f"new key version {rotate_keys(a.out)} in {a.out}: have it certified (veilpay keys certify), restart "
              "the party's servers, then retire the old version")
    else:
        retire_key(a.out, a.retire)
        print(f"signing key version {a.retire} retired in {a.out}: have it certified (veilpay keys certify)")
    return 0


def _cmd_gateway(a: argparse.Namespace) -> int:
    from veilpay.gateway import load_config, make_engine, migrate

    cfg = load_config(a.config)
    if a.workers is not None and a.action != "serve":
        raise ConfigError(f"gateway {a.action}: --workers is for serve only")
    if a.action == "migrate":
        migrate(make_engine(cfg.database))
        print("schema is at the newest revision")
        return 0
    if a.action == "settle":
        if not a.date:
            raise ConfigError("gateway settle: --date YYYY-MM-DD (a closed period) is required")
        return _operator_call(a, "/admin/v1/settle", {"settlementDate": a.date})
    if a.action == "analytics":
        if not a.date:
            raise ConfigError("gateway analytics: --date YYYY-MM-DD (a closed period) is required")
        return _operator_call(a, "/admin/v1/analytics", {"period": a.date})
    from veilpay.gateway.serving import run

    run(a.config, a.log, a.workers or 1)
    return 0


def _cmd_partner(a: argparse.Namespace) -> int:
    if a.action == "settlement":
        return _partner_settlement(a)
    if a.action in ("wallet", "code"):
        return _partner_admin(a)
    import uvicorn

    from veilpay.gateway.observe import configure_logging
    from veilpay.partners import create_acqp_app, create_mpp_app, load_partner_config
    from veilpay.sdk import load_party

    if not a.config:
        raise ConfigError("partner serve: --config is required")
    cfg = load_partner_config(a.config)
    role = load_party(cfg.keys).public.role
    app = create_mpp_app(cfg) if role == "mpp" else create_acqp_app(cfg) if role == "acqp" else None
    if app is None:
        raise ConfigError(f"{cfg.keys}: role {role!r} is not a partner role")
    configure_logging(a.log)
    host, port = cfg.host_port
    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False, loop="uvloop", http="httptools",
                timeout_graceful_shutdown=5)
    return 0


def _partner_admin(a: argparse.Namespace) -> int:
    """A test wallet (``wallet``) or a payment code (``code``) at a running reference MPP,
    through its admin API with the admin token from its own secret.json."""
    import httpx

    from veilpay.partners import load_partner_config
    from veilpay.sdk import load_party

    if not a.config or not a.user:
        raise ConfigError(f"partner {a.action}: --config (the MPP's) and --user are required")
    cfg = load_partner_config(a.config)
    keys = load_party(cfg.keys)
    if keys.public.role != "mpp":
        raise ConfigError(f"{cfg.keys}: partner {a.action} talks to a wallet (role mpp), not {keys.public.role!r}")
    host, port = cfg.host_port
    url = f"http://{host}:{port}"
    if a.action == "wallet":
        if not (a.name and a.currency and a.balance):
            raise ConfigError("partner wallet: --name, --currency and --balance (minor units) are required")
        if not a.balance.isdigit():
            raise ConfigError("partner wallet: --balance is a whole number of minor units")
        path, body = "/admin/wallets", {"userId": a.user, "name": a.name, "currency": a.currency,
                                        "balance": int(a.balance)}
    else:
        path, body = "/admin/codes", {"userId": a.user}
    try:
        r = httpx.post(url + path, json=body, headers={"Authorization": f"Bearer {keys.admin_token}"}, timeout=10)
    except httpx.HTTPError as exc:
        raise GatewayUnavailable(f"{url}: the MPP does not answer ({type(exc).__name__}); is it serving?") from exc
    if r.status_code != 200:
        raise ConfigError(f"{url}{path}: HTTP {r.status_code}: {r.text[:200]}")
    print(json.dumps(r.json()))
    return 0


def _cmd_risk(a: argparse.Namespace) -> int:
    """``publish``: this training party's share of a model kept secret-shared, re-shared
    to the privacy nodes; ``rules``: the MPP's rule set, signed, to every share holder."""
    from veilpay.partners import load_partner_config
    from veilpay.partners._common import load_identity, trust_of
    from veilpay.risk.rules import parse_rules
    from veilpay.sdk import GatewayClient
    from veilpay.sdk.riskclient import load_model_component, post_rules, publish_model

    cfg = load_partner_config(a.config)
    rules: dict[str, Any] = {}
    if a.action == "publish":
        if not (a.model_dir and a.model and a.mpp and a.acqp):
            raise ConfigError("risk publish: --model-dir, --model, --mpp and --acqp are required")
        load_model_component(a.model_dir)  # a missing or foreign file is named before any call
    else:
        if not a.file:
            raise ConfigError("risk rules: --file (the rule set, JSON) is required")
        try:
            rules = json.loads(Path(a.file).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{a.file}: {exc}") from exc
        if not isinstance(rules, dict):
            raise ConfigError(f"{a.file}: a rule set is a JSON object (docs/risk.md)")
    keys, gateway = load_identity(cfg, "mpp" if a.action == "rules" else load_party_role(cfg.keys))
    if a.action == "rules":
        rules.setdefault("mpp", keys.id)  # the MPP whose config signs it
        parse_rules(rules)  # a malformed rule set is named before any call
    try:
        with GatewayClient(keys, cfg.gateway_url, gateway, **trust_of(cfg)) as client:
            d = client.directory()
    except GatewayUnavailable as exc:
        raise GatewayUnavailable(f"{cfg.gateway_url}: the gateway does not answer ({exc}); is it serving? "
                                 f"(gateway_url in {a.config})") from exc
    if d.privacy is None:
        raise ConfigError("the gateway's directory announces no privacy nodes")
    if a.action == "publish":
        out = publish_model(keys, a.model_dir, a.model, a.mpp, a.acqp, d.nodes(), d.privacy)
    else:
        out = post_rules(keys, rules, d.nodes(), d.privacy)
    print(json.dumps(out))
    return 0


def load_party_role(folder: Path) -> str:
    from veilpay.sdk import load_party

    return load_party(folder).public.role


def _partner_settlement(a: argparse.Namespace) -> int:
    """A partner's settlement files from the gateway's sealed settlement document."""
    from pathlib import Path

    from veilpay.sdk import load_party
    from veilpay.sdk.keys import PublicEntry
    from veilpay.sdk.settlement import assemble
    from veilpay.sdk.shares import Privacy

    if not (a.keys and a.input and a.out and a.node_key):
        raise ConfigError("partner settlement: --keys, --input, --out and --node-key (each node's public.json) are required")
    me = load_party(a.keys)
    try:
        doc = json.loads(Path(a.input).read_text())
        nodes = {e.id: e for e in (PublicEntry.from_json(json.loads(Path(p).read_text())) for p in a.node_key)}
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"partner settlement: {exc}") from exc
    privacy = Privacy.from_json(doc.get("privacy") if isinstance(doc, dict) else None)
    done = assemble(doc, me, nodes, privacy)
    done.write(a.out)
    print(f"wrote {Path(a.out) / 'summary.csv'} ({len(done.summary)} rows) and detail.csv ({len(done.detail)} rows) "
          f"for {me.id}, period {done.period}")
    for m in done.mismatches:
        print(f"MISMATCH {m}", file=sys.stderr)
    return 1 if done.mismatches else 0


def _cmd_mcp(a: argparse.Namespace) -> int:
    import os

    from veilpay.mcp.config import load_mcp_config
    from veilpay.mcp.server import build_server

    path = a.partner_config or os.environ.get("VEILPAY_MCP_CONFIG")
    if not path:
        raise ConfigError("give --partner-config or set VEILPAY_MCP_CONFIG")
    tools = {t.strip() for t in a.tools.split(",") if t.strip()} if a.tools else None
    srv = build_server(load_mcp_config(path), tools=tools, read_only=a.read_only)
    logging.getLogger().handlers[:] = [logging.StreamHandler(sys.stderr)]  # stdout carries the protocol
    if a.transport == "stdio":
        srv.run("stdio")
    else:
        srv.run("streamable-http", host=a.host, port=a.port)
    return 0


def _cmd_node(a: argparse.Namespace) -> int:
    if a.action == "serve":
        return _node_serve(a)
    if a.action == "ledger":
        return _node_ledger(a)
    if not a.party or not a.network:
        raise ConfigError("node run: --party and --network are required")
    from veilpay.host import keep_freed_memory
    from veilpay.mpc import load_program, run_party

    keep_freed_memory()

    if not a.program:
        raise ConfigError("node run: --program is required")
    kwargs = _json_arg(a.args_json, "--args-json")
    if not isinstance(kwargs, dict):
        raise VeilpayError("--args-json must be a JSON object")
    result = run_party(
        load_program(a.program), a.network, a.party, protocol=a.protocol,
        session=bytes.fromhex(a.session) if a.session else None,
        compute=a.compute.split(",") if a.compute else None, frac_bits=a.frac_bits, trunc=a.trunc,
        timeout=a.timeout, **kwargs,
    )
    print(json.dumps(result))
    return 0


def _node_serve(a: argparse.Namespace) -> int:
    """A long-running privacy node: its API for the gateway on the endpoint in its
    public.json (or ``listen``), its MPC channels on its address in the network file."""
    import uvicorn

    from veilpay.gateway.observe import configure_logging
    from veilpay.node.app import create_node_app
    from veilpay.node.config import load_node_config
    from veilpay.sdk import load_party

    if not a.config:
        raise ConfigError("node serve: --config node.toml is required (format: docs/nodes.md)")
    cfg = load_node_config(a.config)
    keys = load_party(cfg.keys)
    listen = cfg.listen or keys.public.endpoint.split("://", 1)[-1].rstrip("/")
    host, _, port = listen.rpartition(":")
    if not port.isdigit():
        raise ConfigError("node serve: give listen = host:port, or an endpoint with a port in its public.json")
    app = create_node_app(cfg)
    configure_logging(a.log)
    if cfg.risk.enabled:
        # The scoring mesh runs ~20 rounds per micro-batch on threads beside the event
        # loop: with the default 5 ms GIL switch interval a round waits for the loop's
        # slice; a shorter one lets the mesh's threads take their turn sooner.
        sys.setswitchinterval(0.0005)
    uvicorn.run(app, host=host or "127.0.0.1", port=int(port), log_config=None, access_log=False, loop="uvloop",
                http="httptools", timeout_graceful_shutdown=5)
    return 0


def _node_ledger(a: argparse.Namespace) -> int:
    """``fetch``: a node's disclosure ledger, as a partner or the gateway; ``verify``:
    check one or more copies (each against its node's key) and that they do not fork."""
    from pathlib import Path

    from veilpay.errors import LedgerError
    from veilpay.sdk.keys import PublicEntry
    from veilpay.sdk.ledger import compare_records, verify_records

    if a.what == "fetch":
        return _ledger_fetch(a)
    if a.what != "verify" or not a.file or len(a.file) != len(a.node_key):
        raise ConfigError("node ledger verify: one --node-key (the node's public.json) per --file")
    copies = []
    for f, k in zip(a.file, a.node_key, strict=True):
        try:
            records = [json.loads(line) for line in Path(f).read_text().splitlines() if line.strip()]
            node = PublicEntry.from_json(json.loads(Path(k).read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"node ledger verify: {exc}") from exc
        try:
            seq, head = verify_records(records, node)
        except LedgerError as exc:
            print(f"{f}: INVALID: {exc}")
            return 1
        print(f"{f}: {seq} entries signed by {node.id}, head {head}")
        copies.append(records)
    for f, other in zip(a.file[1:], copies[1:], strict=True):
        try:
            shared = compare_records(copies[0], other)
        except LedgerError as exc:
            print(f"FORK: {exc}")
            return 1
        print(f"{a.file[0]} and {f} agree on their first {shared} entries")
    return 0


def _ledger_fetch(a: argparse.Namespace) -> int:
    from pathlib import Path

    from veilpay.sdk import load_party
    from veilpay.sdk.keys import PublicEntry
    from veilpay.sdk.ledger import fetch_ledger

    if not (a.keys and len(a.node_key) == 1 and a.url and a.out):
        raise ConfigError("node ledger fetch: --keys, one --node-key, --url and --out are required")
    try:
        node = PublicEntry.from_json(json.loads(Path(a.node_key[0]).read_text()))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"node ledger fetch: {exc}") from exc
    records = fetch_ledger(a.url, load_party(a.keys), node, chain=a.chain)
    Path(a.out).write_text("".join(json.dumps(rec, sort_keys=True) + "\n" for rec in records))
    print(f"wrote {len(records)} records of {node.id}'s {a.chain} ledger to {a.out}")
    return 0


def _operator_call(a: argparse.Namespace, path: str, body: dict[str, Any]) -> int:
    """An operator call to the running gateway, signed with the gateway's own key."""
    import httpx

    from veilpay.gateway import load_config
    from veilpay.sdk import load_party
    from veilpay.sdk.signing import post_headers

    cfg = load_config(a.config)
    keys = load_party(cfg.keys)
    raw = json.dumps(body).encode()
    h = post_headers(keys.signer(), path, keys.id, raw)
    host, port = cfg.host_port
    url = f"http://{host}:{port}{path}"
    try:
        r = httpx.post(url, content=raw, headers=h, timeout=cfg.node_job_timeout_s + 30)
        answer = r.json()
    except httpx.HTTPError as exc:
        raise GatewayUnavailable(f"{url}: {type(exc).__name__} (is `veilpay gateway serve` running?)") from exc
    except ValueError as exc:
        raise GatewayUnavailable(f"{url}: HTTP {r.status_code}, not a JSON answer") from exc
    print(json.dumps(answer, indent=2))
    return 0 if r.status_code == 200 and answer.get("status", "DONE") == "DONE" else 1


def _cmd_launch(a: argparse.Namespace) -> int:
    from veilpay.cli.launch import launch

    args = _json_arg(a.args_json, "--args-json")
    results = launch(a.network, a.program, a.protocol, args, compute=a.compute.split(",") if a.compute else None,
                     trunc=a.trunc, blas=a.blas)
    print(json.dumps(results, indent=2))
    return 0


def _cmd_psi(a: argparse.Namespace) -> int:
    from veilpay.crypto import label_digest
    from veilpay.net import connect_mesh, load_network
    from veilpay.psi import check_psi_files, run_psi_files

    columns = a.columns.split(",") if a.columns else None
    if a.ray_address:
        return _psi_on_ray(a, columns)
    if a.partitions is not None or a.memory_per_worker is not None or a.run_dir:
        raise InvalidInput("--partitions, --memory-per-worker and --run-dir need --ray-address")
    opts: dict[str, Any] = {"mode": a.mode, "reveal": a.reveal, "normalise": a.normalise, "on_null": a.on_null,
                            "sort_by": a.sort_by, "cache": a.cache, "protocol": a.protocol,
                            "query_budget": a.query_budget, "max_key_age_s": a.max_key_age_days * 86400}
    # a local mistake (no input file, a missing column) fails here, not after waiting for the peer
    check_psi_files(a.role, a.input, a.key, a.output, columns, **opts)
    network = load_network(a.network)
    peer = _psi_peer(network, a)
    session = label_digest(f"veilpay/psi/{network.name}/{a.session or ''}")
    comm = connect_mesh(network, a.party, session, timeout=a.timeout, parties=sorted([a.party, peer]))
    try:
        summary = run_psi_files(comm, peer, a.role, a.input, a.key, a.output, columns, workers=a.workers, **opts)
    finally:
        comm.close()
    print(json.dumps(summary))
    return 0


def _psi_peer(network: Any, a: argparse.Namespace) -> str:
    """The other party of a PSI run: --peer, or the network's only other party."""
    others = [p for p in network.party_ids if p != a.party]
    peer = a.peer or (others[0] if len(others) == 1 else None)
    if peer is None:
        raise VeilpayError("the network has more than two parties: name the other one with --peer")
    return str(peer)


def _psi_on_ray(a: argparse.Namespace, columns: list[str] | None) -> int:
    """`veilpay psi --ray-address`: the partitioned run (docs/psi.md, "Past one machine")."""
    from veilpay.crypto import label_digest
    from veilpay.net import connect_mesh, load_network
    from veilpay.psi import check_psi_files
    from veilpay.psi.partitioned import DEFAULT_MEMORY_MIB, ray_init, ray_shutdown, run_partitioned

    if a.mode != "intersection":
        raise InvalidInput("--ray-address runs intersections (RR22, KKRT or ECDH per partition), not --mode " + a.mode)
    check_psi_files(a.role, a.input, a.key, a.output, columns, reveal=a.reveal, normalise=a.normalise,
                    on_null=a.on_null, sort_by=a.sort_by, protocol=a.protocol)
    ray_init(a.ray_address)  # without Ray: which extra to install, before any connection
    network = load_network(a.network)
    peer = _psi_peer(network, a)
    session = label_digest(f"veilpay/psi-ray/{network.name}/{a.session or ''}")
    comm = connect_mesh(network, a.party, session, timeout=a.timeout, parties=sorted([a.party, peer]))
    try:
        summary = run_partitioned(comm, peer, a.role, a.input, a.key, a.network, a.output, columns, reveal=a.reveal,
                                  normalise=a.normalise, on_null=a.on_null, sort_by=a.sort_by, protocol=a.protocol,
                                  partitions=a.partitions, memory_mib=a.memory_per_worker or DEFAULT_MEMORY_MIB,
                                  workers=a.workers, run_dir=a.run_dir, worker_port_base=a.worker_port_base,
                                  timeout=a.timeout)
    finally:
        comm.close()
        ray_shutdown()
    print(json.dumps(summary))
    return 0


def _cmd_psi_setup(a: argparse.Namespace) -> int:
    from veilpay.psi import setup_psi_file

    print(json.dumps(setup_psi_file(a.input, a.key, a.cache, normalise=a.normalise, on_null=a.on_null,
                                    workers=a.workers)))
    return 0


def _run_job(a: argparse.Namespace, kind: str, program: Any) -> int:
    """Run ``program(rt, job)`` as this party of the job's network (train, score)."""
    from veilpay.crypto import label_digest, sha256
    from veilpay.ml import load_job
    from veilpay.mpc import run_party

    job = load_job(a.job)
    if a.party not in job.parties:
        raise VeilpayError(f"party {a.party!r} is not in the job's [parties] ({', '.join(sorted(job.parties))})")
    session = label_digest(f"veilpay/{kind}/" + sha256(job.fingerprint()).hex() + "/" + (a.session or ""))
    report = run_party(lambda rt: program(rt, job), str(job.network), a.party, protocol=job.protocol,
                       session=session, compute=job.compute, frac_bits=job.frac_bits, timeout=job.timeout)
    print(json.dumps(report))
    return 0


def _cmd_train(a: argparse.Namespace) -> int:
    from veilpay.ml import run_training

    return _run_job(a, "train", lambda rt, job: run_training(rt, job, a.out, show_progress=None))


def _cmd_score(a: argparse.Namespace) -> int:
    from veilpay.ml import run_scoring

    return _run_job(a, "score", lambda rt, job: run_scoring(rt, job, a.model, a.input, a.output, a.to, a.unscored))


def _cmd_demo(a: argparse.Namespace) -> int:
    from pathlib import Path

    from veilpay.cli.demo import run_demo
    from veilpay.cli.gateway_demo import run_gateway_demo

    run_gateway_demo(Path(a.out) if a.out else None)
    print("veilpay demo, part 3: the MPC engine on its own")
    run_demo(a.out)
    return 0


def _mpc_options(p: argparse.ArgumentParser, program_required: bool = True, network_required: bool = True) -> None:
    p.add_argument("--network", required=network_required, help="network file (TOML), see `veilpay keys`")
    p.add_argument("--program", required=program_required, help="the SPMD program, as package.module:function")
    p.add_argument("--protocol", choices=["semi2k", "aby3"], default="semi2k")
    p.add_argument("--compute", help="roles, comma separated: semi2k P0,P1,dealer; aby3 P0,P1,P2")
    p.add_argument("--trunc", choices=["exact", "local"], default="exact", help="semi2k truncation")


def _key_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--normalise", choices=["none", "trim", "casefold"], default="trim")
    p.add_argument("--on-null", choices=["drop", "error"], default="drop", help="rows with an empty key")
    p.add_argument("--workers", type=int, help="processes for the curve work (default: every core)")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("veilpay")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _json_arg(text: str | None, flag: str) -> Any:
    """A JSON command-line argument; ConfigError naming the flag when it is not JSON."""
    if not text:
        return {}
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{flag} is not JSON: {exc}") from exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="veilpay", description=__doc__,
                                     epilog="exit codes: 0 done, 1 the command's own no, 2 usage/config/input error, "
                                            "3 peer unreachable or failed, 70 defect, 130 interrupted")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser.add_argument("--version", action="version", version=f"veilpay {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    k = sub.add_parser("keys", help="keys and certificates: network (TLS mesh), partner / gateway (signing and HPKE "
                       "keys), rotate / retire, authority / certify (the key authority), monitor (watch the key log)")
    ks = k.add_subparsers(dest="kind", required=True, metavar="{network,partner,gateway,rotate,retire,authority,"
                          "certify,monitor}")
    kn = ks.add_parser("network", help="a CA, one certificate per party and a network file (MPC, PSI, nodes)")
    kn.add_argument("--out", required=True, help="folder to write the CA, certificates and network.toml into")
    kn.add_argument("--parties", required=True, help="party ids, comma separated (DNS labels)")
    kn.add_argument("--host", default="127.0.0.1", help="the address every party listens on (default 127.0.0.1)")
    kn.add_argument("--base-port", type=int, default=7100, help="the first party's port; the next ones count up")
    kn.add_argument("--name", default="veilpay", help="the network's name (in the CA's subject)")
    for kind, helptext in (("partner", "a partner's or privacy node's signing and HPKE keys"),
                           ("gateway", "the gateway's signing keys")):
        kp = ks.add_parser(kind, help=helptext)
        kp.add_argument("--out", required=True, help="the party's key folder (public.json, secret.json)")
        kp.add_argument("--id", required=True, help="the party's id")
        if kind == "partner":
            kp.add_argument("--role", required=True, choices=["mpp", "acqp", "node"],
                            help="payer-side wallet (mpp), acquirer (acqp) or privacy node (node)")
            kp.add_argument("--endpoint", help="base URL where the gateway reaches it (MPP, privacy node)")
            kp.add_argument("--region", help="ISO 3166 alpha-2 country, for corridor analytics")
            kp.add_argument("--notify-url", help="webhook URL (ACQP)")
            kp.add_argument("--notify-batch-url", help="URL that takes several webhooks in one call (ACQP, optional)")
            kp.add_argument("--code-prefix", help="payment code prefixes it issues, comma separated (MPP)")
        kp.add_argument("--suite", choices=["x25519", "mlkem768-x25519"], default="x25519", help="HPKE suite")
    kr = ks.add_parser("rotate", help="add key version n+1 (certify it, restart the party, then retire n)")
    kr.add_argument("--out", required=True, help="the party's key folder")
    kt = ks.add_parser("retire", help="retire a signing key version (never the last active one)")
    kt.add_argument("--out", required=True, help="the party's key folder")
    kt.add_argument("--retire", type=int, required=True, help="the signing key version to retire")
    ka = ks.add_parser("authority", help="the network's key authority (offline) and its empty log")
    ka.add_argument("--out", required=True, help="a folder for authority.json, secret.json and log/")
    ka.add_argument("--name", default="veilpay", help="the network's name")
    kc = ks.add_parser("certify", help="the authority certifies party entries (after creation, rotation, retirement)")
    kc.add_argument("--authority", required=True, help="the authority's folder")
    kc.add_argument("--entry", action="append", required=True, help="a party's public.json; repeat for more")
    km = ks.add_parser("monitor", help="watch the key log for entries in your name; exchange heads with the nodes")
    km.add_argument("--keys", required=True, help="your key folder")
    km.add_argument("--authority", required=True, help="the authority's authority.json")
    km.add_argument("--gateway-url", required=True, help="the gateway that serves the key log")
    km.add_argument("--state", help="where to keep the last head seen (default: KEYS/log-state.json)")
    km.add_argument("--node-key", action="append", default=[],
                    help="a privacy node's public.json, to exchange log heads with as a witness; repeat")
    k.set_defaults(fn=_cmd_keys)

    n = sub.add_parser("node", help="run: one party of an MPC program over TCP + mutual TLS; "
                       "serve: a long-running privacy node for the gateway; ledger fetch / verify: its disclosure ledger")
    n.add_argument("action", nargs="?", default="run", choices=["run", "serve", "ledger"])
    n.add_argument("what", nargs="?", choices=["fetch", "verify"], help="ledger: fetch a copy, or verify copies")
    _mpc_options(n, program_required=False, network_required=False)
    n.add_argument("--party", help="run: this party's id in the network file")
    n.add_argument("--config", help="serve: the node's config file (TOML), see docs/nodes.md")
    n.add_argument("--log", help="serve: write JSON log lines to this file (default: stderr)")
    n.add_argument("--file", action="append", default=[], help="ledger verify: a copy (JSON lines); repeat to compare")
    n.add_argument("--node-key", action="append", default=[], help="ledger: the node's public.json, one per --file")
    n.add_argument("--keys", help="ledger fetch: your key folder (the gateway's, or a partner the node pinned)")
    n.add_argument("--url", help="ledger fetch: the node's base URL")
    n.add_argument("--out", help="ledger fetch: where to write the copy (JSON lines)")
    n.add_argument("--chain", choices=["disclosure", "risk"], default="disclosure",
                   help="ledger fetch: the disclosure ledger, or the risk ledger of scored batches (docs/risk.md)")
    n.add_argument("--session", help="session id (32 hex digits), the same at every party")
    n.add_argument("--frac-bits", type=int, default=16)
    n.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for any message")
    n.add_argument("--args-json", help="this party's private program arguments, a JSON object")
    n.set_defaults(fn=_cmd_node)

    la = sub.add_parser("launch", help="start every party of the network as a local process")
    _mpc_options(la)
    la.add_argument("--args-json", help='per-party arguments: {"party": {...}}')
    la.add_argument("--blas", choices=BLAS_CHOICES, default="inherit",
                    help="the parties' OpenBLAS kernels: inherit OPENBLAS_CORETYPE, or auto (drop a pin; "
                    "ring products are exact whatever the kernel)")
    la.set_defaults(fn=_cmd_launch)

    ps = sub.add_parser("psi", help="private set intersection with one peer over mutual TLS "
                        "(RR22 silent VOLE + OKVS by default, KKRT OT extension or ECDH on X25519; "
                        "unbalanced: OPRF on P-256)")
    ps.add_argument("--role", required=True, choices=["receiver", "sender"])
    ps.add_argument("--network", required=True, help="network file (TOML) naming both parties")
    ps.add_argument("--party", required=True, help="this party's id")
    ps.add_argument("--peer", help="the other party (default: the only other one in the network)")
    ps.add_argument("--input", help="CSV (or Parquet, with pyarrow) file (not for the unbalanced sender)")
    ps.add_argument("--key", action="append", default=[], help="key column; repeat for a composite key")
    ps.add_argument("--output", help="CSV of the common rows (written only where the intersection is learnt)")
    ps.add_argument("--columns", help="output columns, comma separated (default: all)")
    ps.add_argument("--sort-by", help="sort output rows by this column (default: input order)")
    ps.add_argument("--mode", choices=["intersection", "cardinality", "unbalanced"], default="intersection",
                    help="unbalanced: the sender answers from a set prepared by `veilpay psi-setup`")
    ps.add_argument("--protocol", choices=["kkrt", "rr22", "ecdh"],
                    help="intersection: rr22 (silent VOLE + OKVS, default), kkrt (OT extension) or ecdh; "
                         "cardinality needs ecdh")
    ps.add_argument("--cache", help="unbalanced mode: the sender's prepared set, or the receiver's copy of it")
    ps.add_argument("--query-budget", type=int, default=10_000_000,
                    help="unbalanced sender: ids one client may have evaluated under one key")
    ps.add_argument("--max-key-age-days", type=float, default=30.0,
                    help="unbalanced sender: serve no query with an older key; run psi-setup again to rotate it")
    ps.add_argument("--reveal", choices=["receiver", "both"], default="receiver", help="who learns the result")
    _key_options(ps)
    ps.add_argument("--session", help="a run label both parties pass (keeps concurrent runs apart)")
    ps.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for any message")
    ps.add_argument("--ray-address", help="partition the run over this party's Ray cluster: 'local' (a Ray "
                    "instance on this machine) or the cluster's address; needs pip install 'veilpay[ray]'")
    ps.add_argument("--partitions", type=int, help="with --ray-address: partition count, the same at both parties "
                    "(default: from the larger set and --memory-per-worker)")
    ps.add_argument("--memory-per-worker", type=int, help="with --ray-address: MiB one partition's worker may use "
                    "(default 1024)")
    ps.add_argument("--run-dir", help="with --ray-address: folder for buckets and finished partitions, on storage "
                    "every worker reads; run again with the same folder to resume after a crash")
    ps.add_argument("--worker-port-base", type=int, help="with --ray-address: first port of this party's "
                    "partition workers (default: its network port + 1000)")
    ps.set_defaults(fn=_cmd_psi)

    pu = sub.add_parser("psi-setup", help="unbalanced PSI, offline: prepare the server's set (OPRF on P-256)")
    pu.add_argument("--input", required=True, help="CSV (or Parquet, with pyarrow) file")
    pu.add_argument("--key", required=True, action="append", help="key column; repeat for a composite key")
    pu.add_argument("--cache", required=True, help="folder for the prepared set and its key (keep it private)")
    _key_options(pu)
    pu.set_defaults(fn=_cmd_psi_setup)

    t = sub.add_parser("train", help="joint model training on common customers (PSI, then secure LR in MPC)")
    t.add_argument("--job", required=True, help="job file (TOML), the same at every party")
    t.add_argument("--party", required=True, help="this party's name in the job")
    t.add_argument("--out", help="folder for report.json, prep.json and the model (default: print the report only)")
    t.add_argument("--session", help="a run label every party passes (keeps concurrent runs apart)")
    t.set_defaults(fn=_cmd_train)

    sc = sub.add_parser("score", help="score new customers with a trained model (revealed or still shared) in MPC")
    sc.add_argument("--job", required=True, help="the training job file")
    sc.add_argument("--party", required=True, help="this party's name in the job")
    sc.add_argument("--model", required=True, help="this party's training --out folder (prep.json, model)")
    sc.add_argument("--input", help="data parties: the new customers (CSV or Parquet) with the key columns")
    sc.add_argument("--output", help="the receiving party: CSV of key columns and scores")
    sc.add_argument("--to", help="the data party that receives the scores (default: the label party)")
    sc.add_argument("--unscored", help="data parties: CSV of the keys of input rows that could not be scored (the "
                    "other party lacks them); default NAME.unscored.csv beside --output, or beside --input")
    sc.add_argument("--session", help="a run label every party passes")
    sc.set_defaults(fn=_cmd_score)

    g = sub.add_parser("gateway", help="the encrypted payment gateway (FastAPI on uvicorn)")
    g.add_argument("action", choices=["serve", "migrate", "settle", "analytics"])
    g.add_argument("--config", required=True, help="gateway config (TOML), see docs/gateway.md")
    g.add_argument("--date", help="settle / analytics: the closed period, a UTC day YYYY-MM-DD (or a shorter "
                   "cycle's start, YYYY-MM-DDTHH:MM:SSZ)")
    g.add_argument("--log", help="write JSON log lines to this file (default: stderr)")
    g.add_argument("--workers", type=int,
                   help="serve only (default 1): gateway processes on the one port, replicas sharing the database "
                   "(PostgreSQL only); a worker that dies is started again")
    g.set_defaults(fn=_cmd_gateway)

    pa = sub.add_parser("partner", help="serve: a reference partner (an MPP wallet or an ACQP merchant backend); "
                        "settlement: a partner's settlement files from the gateway's sealed document; wallet / code: "
                        "a test wallet and a payment code at a running reference MPP")
    pa.add_argument("action", choices=["serve", "settlement", "wallet", "code"],
                    help="serve; settlement; wallet / code: a test wallet and a payment code at a running reference "
                         "MPP (its admin API)")
    pa.add_argument("--config", help="serve, wallet, code: partner config (TOML), see docs/gateway.md")
    pa.add_argument("--user", help="wallet, code: the wallet's user id")
    pa.add_argument("--name", help="wallet: the holder's name")
    pa.add_argument("--currency", help="wallet: ISO 4217 code of the wallet's currency")
    pa.add_argument("--balance", help="wallet: opening balance in minor units")
    pa.add_argument("--keys", help="settlement: the partner's key folder")
    pa.add_argument("--input", help="settlement: settlement.json the gateway wrote for this partner")
    pa.add_argument("--node-key", action="append", default=[],
                    help="settlement: a privacy node's public.json, pinned; repeat for every share holder")
    pa.add_argument("--out", help="settlement: folder for summary.csv and detail.csv")
    pa.add_argument("--log", help="write JSON log lines to this file (default: stderr)")
    pa.set_defaults(fn=_cmd_partner)

    rk = sub.add_parser("risk", help="real-time fraud scoring at the privacy nodes (docs/risk.md)",
                        description="publish: a training party (the MPP and the ACQP, once each per model version) "
                        "re-shares its share of a model kept secret-shared to the privacy nodes; rules: the MPP signs "
                        "its rule set (thresholds and velocity rules; format in docs/risk.md; 'mpp' defaults to the "
                        "config's MPP) and hands it to every share holder. Both need the gateway (for the "
                        "directory) and the nodes running. Exit codes: 0 done, 1 a node refused (its code is "
                        "printed), 2 usage or input, 3 unreachable.")
    rk.add_argument("action", choices=["publish", "rules"],
                    help="publish: this training party's share of a model kept shared, to the nodes; rules: the "
                         "MPP's rule set, signed, to the nodes")
    rk.add_argument("--config", required=True, help="this partner's config (TOML): keys, gateway, authority, privacy")
    rk.add_argument("--model-dir", help="publish: this party's training --out folder (model_shares.npz)")
    rk.add_argument("--model", help="publish: the model version to publish it as")
    rk.add_argument("--mpp", help="publish: the MPP of the model (the training job's label party)")
    rk.add_argument("--acqp", help="publish: the ACQP of the model")
    rk.add_argument("--file", help="rules: the rule set (JSON), see docs/risk.md")
    rk.set_defaults(fn=_cmd_risk)

    m = sub.add_parser("mcp", help="an MCP server that lets an AI assistant take payments and refunds for one acquirer")
    m.add_argument("--partner-config", help="TOML with [partner] credentials and [mcp] limits (or VEILPAY_MCP_CONFIG)")
    m.add_argument("--tools", help="allow-list, comma separated (default: all)")
    m.add_argument("--read-only", action="store_true", help="only the query, list and settlement tools")
    m.add_argument("--transport", choices=["stdio", "streamable-http"], default="stdio")
    m.add_argument("--host", default="127.0.0.1", help="streamable-http: address to listen on")
    m.add_argument("--port", type=int, default=8765, help="streamable-http: port")
    m.set_defaults(fn=_cmd_mcp)

    d = sub.add_parser("demo", help="the main job on embedded data: encrypted payments through the gateway, scored "
                       "for fraud at the privacy nodes, an AI assistant over MCP, then three wallets in MPC (aby3, TLS)")
    d.add_argument("--out", help="directory for the demo's certificates (default: a temp dir)")
    d.set_defaults(fn=_cmd_demo)
    return parser


# Exit codes: 0 done; 1 the command's own "no" (a foreign key-log entry, a refused
# job); 2 a usage, config or input error; 3 a peer that cannot be reached or failed
# mid-way; 70 a defect in veilpay (with --debug, its traceback); 130 interrupted.
EXIT_USAGE, EXIT_PEER, EXIT_SOFTWARE, EXIT_INTERRUPTED = 2, 3, 70, 130


def _exit_code(exc: BaseException) -> int:
    import httpx

    from veilpay.errors import DatabaseUnavailable, GatewayUnavailable, NodeError, PeerDisconnected, ProtocolTimeout

    if isinstance(exc, GatewayUnavailable | DatabaseUnavailable | PeerDisconnected | ProtocolTimeout | httpx.HTTPError
                  | ConnectionError):
        return EXIT_PEER
    if isinstance(exc, NodeError):  # a node's own "no" (a refused rule set, a model version that exists)
        return 1
    if isinstance(exc, VeilpayError | OSError):
        return EXIT_USAGE
    return EXIT_SOFTWARE


def main(argv: Sequence[str] | None = None) -> int:
    """The ``veilpay`` command. No error prints a traceback unless ``--debug``: one line
    on stderr naming the error, and the exit code above."""
    parser = build_parser()
    a = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(a.fn(a))
    except KeyboardInterrupt:
        print("veilpay: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001  # every error becomes one line and an exit code
        if a.debug:
            raise
        code = _exit_code(exc)
        what = "internal error (a defect; --debug shows where)" if code == EXIT_SOFTWARE else "error"
        message = str(exc).splitlines()[0] if str(exc) else ""
        print(f"veilpay: {what}: {type(exc).__name__}: {message}"[:2000], file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
