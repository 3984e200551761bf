"""A payment network on loopback: the gateway, one MPP and one ACQP, each its own
process (``veilpay gateway serve`` / ``veilpay partner serve``) with its own keys,
config and SQLite file under one folder; with ``privacy="semi2k"`` (or ``"aby3"``)
also three privacy nodes (``veilpay node serve``) and hidden amounts. Used by the
demo, the live tests and ``bench/gateway.py``."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from veilpay.errors import ConfigError
from veilpay.sdk import GatewayClient, create_party, load_party
from veilpay.sdk.authority import certify, create_authority
from veilpay.sdk.keys import PublicEntry
from veilpay.sdk.shares import Privacy

__all__ = ["LocalNet", "free_port", "toml_value"]

_NODE_RISK = ("batch_max", "batch_wait_ms", "rules_min_interval_s", "heartbeat_s", "answer_timeout_s")


def free_port() -> int:
    """A free port below the ephemeral range (see cli.demo._free_port_base)."""
    from veilpay.cli.demo import _free_port_base

    return _free_port_base(1)


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


class LocalNet:
    def __init__(self, root: str | Path, pets: bool = True, database: str | None = None,
                 gateway_options: dict[str, Any] | None = None, fx: dict[str, str] | None = None,
                 privacy: str = "", node_policy: dict[str, Any] | None = None,
                 risk: dict[str, Any] | None = None, replicas: int = 1, gateway_workers: int = 1) -> None:
        """``risk``: the nodes score payments (``[node.risk]`` options, e.g. batch_wait_ms)
        and the MPP asks them (``[partner.risk]``: model "local-fraud", budget_ms, ...);
        ``publish_risk`` then hands the nodes a model and a rule set. ``replicas``: more
        gateway processes on the same ``database`` (PostgreSQL), each on its own port
        ("gateway-2", ...), as replicas behind a load balancer; ``gateway_workers``: the
        first gateway runs that many workers on its one port (``--workers``)."""
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.pets = pets
        self.risk_columns: list[str] = []
        self.nodes = ["node-a", "node-b", "node-c"] if privacy else []
        self.gateways = ["gateway", *[f"gateway-{i}" for i in range(2, replicas + 1)]]
        self.gateway_workers = gateway_workers
        self.ports = {n: free_port() for n in [*self.gateways, "mpp-1", "acqp-1", *self.nodes]}
        self.url = {k: f"http://127.0.0.1:{p}" for k, p in self.ports.items()}
        k = self.root / "keys"
        create_party(k / "gateway", "gateway", "gateway")
        create_party(k / "mpp-1", "mpp-1", "mpp", endpoint=self.url["mpp-1"], code_prefixes=["2810"], region="PH")
        create_party(k / "acqp-1", "acqp-1", "acqp", notify_url=self.url["acqp-1"] + "/notify", region="JP",
                     notify_batch_url=self.url["acqp-1"] + "/notifyBatch")
        partners = ["keys/mpp-1/public.json", "keys/acqp-1/public.json"]
        self.privacy: Privacy | None = None
        privacy_opts: dict[str, Any] = {}
        if privacy:
            from veilpay.cli.demo import _free_port_base
            from veilpay.net import provision_network

            for n in self.nodes:
                create_party(k / n, n, "node", endpoint=self.url[n])
            partners += [f"keys/{n}/public.json" for n in self.nodes]
            holders = self.nodes[:2] if privacy == "semi2k" else self.nodes
            dealer = self.nodes[2] if privacy == "semi2k" else ""
            self.network = provision_network(self.root / "mpcnet", self.nodes, base_port=_free_port_base(3),
                                             name="privacy", risk=self.nodes if risk is not None else None,
                                             risk_base_port=_free_port_base(3) if risk is not None else 0)
            with self.network.open("a") as fh:
                fh.write(f'[privacy]\nprotocol = "{privacy}"\nnodes = {toml_value(holders)}\n'
                         + (f'dealer = "{dealer}"\n' if dealer else ""))
            privacy_opts = {"privacy": {"protocol": privacy, "nodes": holders, "dealer": dealer}}
            self.privacy = Privacy(privacy, tuple(holders), dealer)
            policy = {"min_count": 2, **(node_policy or {})}
            for n in self.nodes:  # each node pins the partners' keys itself, and runs the same policy
                node = {"party": n, "keys": f"keys/{n}", "network": str(self.network),
                        "gateway_key": "keys/gateway/public.json",
                        "partner_keys": ["keys/mpp-1/public.json", "keys/acqp-1/public.json"],
                        "authority": "authority/authority.json", "database": f"sqlite:///{n}/node.db"}
                node_risk = {"enabled": True, "rules_min_interval_s": 0,
                             **{k: v for k, v in (risk or {}).items() if k in _NODE_RISK}}
                (self.root / f"{n}.toml").write_text(
                    "[node]\n" + "".join(f"{a} = {toml_value(b)}\n" for a, b in node.items())
                    + "[node.policy]\n" + "".join(f"{a} = {toml_value(b)}\n" for a, b in policy.items())
                    + ("[node.risk]\n" + "".join(f"{a} = {toml_value(b)}\n" for a, b in node_risk.items())
                       if risk is not None else ""))
        # the network's key authority (held by the members, not the operator) certifies
        # every partner's and node's entry; every party pins it
        self.authority = create_authority(self.root / "authority", "local network")
        for entry in partners:
            certify(self.root / "authority", self.root / entry)
        opts = {"keys": "keys/gateway", "database": database or "sqlite:///gateway/gateway.db",
                "listen": f"127.0.0.1:{self.ports['gateway']}", "partners": partners, "pets": pets,
                "authority": "authority/authority.json", "key_log": "authority/log",
                **privacy_opts, **(gateway_options or {})}
        for g in self.gateways:
            gw_text = "".join(f"{a} = {toml_value(b)}\n" for a, b in {**opts,
                                                                       "listen": f"127.0.0.1:{self.ports[g]}"}.items())
            (self.root / f"{g}.toml").write_text("[gateway]\n" + gw_text)
        gw_urls = [self.url[g] for g in self.gateways] if replicas > 1 else self.url["gateway"]
        for pid in ("mpp-1", "acqp-1"):
            lines = [f'keys = "keys/{pid}"', 'gateway_key = "keys/gateway/public.json"',
                     f"gateway_url = {toml_value(gw_urls)}", f'database = "sqlite:///{pid}/{pid}.db"',
                     f'listen = "127.0.0.1:{self.ports[pid]}"', f'name = "{pid} wallet"', f"pets = {toml_value(pets)}",
                     'authority = "authority/authority.json"']
            text = "[partner]\n" + "\n".join(lines) + "\n"
            if self.privacy is not None:
                text += "[partner.privacy]\n" + "".join(f"{a} = {toml_value(b)}\n"
                                                         for a, b in self.privacy.to_json().items())
            if pid == "mpp-1" and risk is not None:
                import json

                # the MPP's columns, standardised as they come (a training run would record its own)
                (self.root / "risk").mkdir(exist_ok=True)
                (self.root / "risk" / "mpp-prep.json").write_text(json.dumps({"columns": [
                    {"name": c, "kind": "numeric", "mean": 0.0, "std": 1.0} for c in risk.get("columns", ["v1"])]}))
                self.risk_columns = list(risk.get("columns", ["v1"]))
                mpp_risk = {"model": "local-fraud", "prep": "risk/mpp-prep.json",
                            **{k: v for k, v in risk.items() if k not in (*_NODE_RISK, "columns")}}
                text += "[partner.risk]\n" + "".join(f"{a} = {toml_value(b)}\n" for a, b in mpp_risk.items())
            if pid == "mpp-1":
                text += "[partner.fx]\n" + "".join(f'"{a}" = "{b}"\n' for a, b in (fx or {"JPY/PHP": "0.3812",
                                                                                      "SGD/PHP": "42.55"}).items())
            (self.root / f"{pid}.toml").write_text(text)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    # ------------------------------------------------------------ processes
    def _argv(self, name: str) -> list[str]:
        if name in self.nodes:
            return [sys.executable, "-m", "veilpay.cli.main", "node", "serve", "--config", str(self.root / f"{name}.toml"),
                    "--log", str(self.root / f"{name}.log")]
        if name in self.gateways:
            workers = ["--workers", str(self.gateway_workers)] if name == "gateway" and self.gateway_workers > 1 else []
            return [sys.executable, "-m", "veilpay.cli.main", "gateway", "serve", "--config",
                    str(self.root / f"{name}.toml"), "--log", str(self.root / f"{name}.log"), *workers]
        return [sys.executable, "-m", "veilpay.cli.main", "partner", "serve", "--config", str(self.root / f"{name}.toml"),
                "--log", str(self.root / f"{name}.log")]

    def start(self, name: str, wait: float = 30.0) -> None:
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        with open(self.root / f"{name}.stderr", "ab") as err:  # the child keeps its own copy of the descriptor
            self.procs[name] = subprocess.Popen(self._argv(name), cwd=self.root, env=env, stdout=subprocess.DEVNULL,
                                                stderr=err)
        deadline = time.monotonic() + wait
        probe = "/healthz" if name in self.gateways or name in self.nodes else "/docs-none"
        while time.monotonic() < deadline:
            if self.procs[name].poll() is not None:
                raise ConfigError(f"{name} exited with {self.procs[name].returncode}; see {self.root}/{name}.stderr")
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(self.url[name] + probe, timeout=0.5)
                return
            time.sleep(0.05)
        raise ConfigError(f"{name} did not start within {wait} s")

    def start_all(self) -> None:
        for name in (*self.nodes, *self.gateways, "mpp-1", "acqp-1"):
            self.start(name)

    def operator(self, path: str, body: dict[str, Any]) -> Any:
        """An operator call (settle, analytics) signed with the gateway's own key."""
        import json

        from veilpay.sdk.signing import post_headers

        keys = self.keys("gateway")
        raw = json.dumps(body).encode()
        h = post_headers(keys.signer(), path, keys.id, raw)
        return httpx.post(self.url["gateway"] + path, content=raw, headers=h, timeout=600).json()

    def stop(self, name: str, kill: bool = False) -> None:
        p = self.procs.pop(name, None)
        if p is None:
            return
        p.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)

    def close(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    def __enter__(self) -> LocalNet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ risk
    def publish_risk(self, weights: list[float], bias: float, d_acqp: int, rules: dict[str, Any],
                     frac: int = 20) -> None:
        """Hand the nodes a model and the MPP's rule set, with the nodes serving.

        A local network has no training run behind it, so the model's two parts are a
        fresh split of ``weights`` (the MPP's columns, standardised as they come, then
        the ACQP's: ``risk["columns"]`` then ``d_acqp``) and ``bias``; in production each part is one training party's share
        (``veilpay risk publish``) and nobody holds the weights in the clear."""
        import numpy as np

        from veilpay.risk.shares import encode_fixed, split_words
        from veilpay.sdk.features import model_part
        from veilpay.sdk.riskclient import post_rules, post_to_node

        if self.privacy is None:
            raise ConfigError("publish_risk needs privacy nodes")
        mpp_columns = self.risk_columns
        entries = {n: self.keys(n).public for n in self.nodes}
        parts = split_words(encode_fixed(np.array([*weights, bias]), frac), "semi2k")
        for pid, comp in (("mpp-1", parts[0][:, 0]), ("acqp-1", parts[1][:, 0])):
            part = model_part(self.keys(pid), model="local-fraud", mpp="mpp-1", acqp="acqp-1", component=comp,
                              frac=frac, d_mpp=len(mpp_columns), d_acqp=d_acqp, nodes=entries, privacy=self.privacy)
            for n in self.privacy.nodes:
                post_to_node(self.keys(pid), entries[n], "/node/v1/risk/model", part)
        post_rules(self.keys("mpp-1"), {"mpp": "mpp-1", "model": "local-fraud", **rules}, entries, self.privacy)

    # ------------------------------------------------------------ helpers
    def keys(self, pid: str) -> Any:
        return load_party(self.root / "keys" / pid)

    def gateway_entry(self) -> PublicEntry:
        import json

        return PublicEntry.from_json(json.loads((self.root / "keys" / "gateway" / "public.json").read_text()))

    def client(self, pid: str = "acqp-1", gateway: str = "gateway", **kw: Any) -> GatewayClient:
        kw.setdefault("pets", self.pets)
        kw.setdefault("authority", self.authority)
        kw.setdefault("privacy", self.privacy)
        return GatewayClient(self.keys(pid), self.url[gateway], self.gateway_entry(), **kw)

    def admin(self, pid: str, method: str, path: str, body: Any = None) -> Any:
        r = httpx.request(method, self.url[pid] + path, json=body, timeout=10,
                          headers={"Authorization": f"Bearer {self.keys(pid).admin_token}"})
        r.raise_for_status()
        return r.json()
