"""The network file (TOML) and its provisioning.

    name = "demo"
    ca = "ca.pem"                 # the network CA certificate
    records = "frames"            # optional: "frames" (default) or "tls", see below
    [parties.alice]
    address = "127.0.0.1:7101"
    cert = "alice.pem"
    key = "alice.key"             # needed only on alice's machine

    [privacy]                     # a privacy-node network only (docs/nodes.md)
    protocol = "semi2k"
    nodes = ["node-a", "node-b"]
    dealer = "node-c"

Relative paths are relative to the network file; every key is typed and an unknown
one is refused (``veilpay.settings``).

``records`` says how data travels once a link's TLS 1.3 handshake has authenticated
both ends: "frames", AES-256-GCM frames keyed inside the TLS session
(`veilpay.net.frames`, half the CPU per MiB), or "tls", TLS records throughout.
Every party of a network must use the same value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass as std_dataclass
from dataclasses import replace
from pathlib import Path
from typing import Literal

from pydantic.dataclasses import dataclass

from veilpay.crypto import issue_party_certificate, make_ca, write_identity
from veilpay.errors import ConfigError
from veilpay.settings import STRICT, PrivacySection, RelPath, load_doc, parse_table

__all__ = ["RECORDS", "NetworkConfig", "PartyEntry", "load_network", "provision_network"]

RECORDS = ("frames", "tls")

_PARTY_ID = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


@std_dataclass(frozen=True)
class PartyEntry:
    name: str
    host: str
    port: int
    cert: Path
    key: Path
    risk_port: int = 0  # the privacy nodes' scoring mesh (docs/risk.md); 0: none


@std_dataclass(frozen=True)
class NetworkConfig:
    name: str
    ca: Path
    parties: dict[str, PartyEntry]
    path: Path
    records: str = "frames"
    privacy: PrivacySection | None = None

    @property
    def party_ids(self) -> list[str]:
        return list(self.parties)

    def risk_view(self, parties: list[str]) -> NetworkConfig:
        """This network with ``parties`` at their scoring-mesh ports (``risk_address``):
        the nodes score payments on a mesh of their own, beside the gateway's jobs."""
        missing = [p for p in parties if p not in self.parties or not self.parties[p].risk_port]
        if missing:
            raise ConfigError(f"{self.path}: party {missing[0]!r} has no risk_address (the scoring mesh)")
        return replace(self, parties={p: replace(self.parties[p], port=self.parties[p].risk_port) for p in parties})


# Names every host resolves to itself: a party named so could pass for any machine's
# own services in a tool that checks host names, so no party may take one.
RESERVED_IDS = frozenset({"localhost", "localdomain", "ip6-localhost", "ip6-loopback", "broadcasthost"})


def check_party_id(name: str) -> str:
    if not _PARTY_ID.match(name):
        raise ConfigError(
            f"party id {name!r} must be a DNS label: lower-case letters, digits and '-', starting with a letter"
        )
    if name in RESERVED_IDS:
        raise ConfigError(f"party id {name!r} is a host name every machine uses for itself; choose another")
    return name


@dataclass(config=STRICT, frozen=True)
class _PartySection:
    address: str
    cert: RelPath
    key: RelPath | None = None  # needed only on the party's own machine
    risk_address: str = ""      # privacy nodes that score payments: their scoring mesh, host:port


@dataclass(config=STRICT, frozen=True)
class _NetworkFile:
    ca: RelPath
    parties: dict[str, _PartySection]
    name: str = ""
    records: Literal["frames", "tls"] = "frames"
    privacy: PrivacySection | None = None  # the privacy nodes' protocol and roles (docs/nodes.md)


def load_network(path: str | Path) -> NetworkConfig:
    """The network file ``path``; ConfigError naming the file, line and key."""
    path = Path(path)
    doc, text = load_doc(path)
    raw = parse_table(_NetworkFile, doc, str(path), text, (), path.parent)
    if len(raw.parties) < 2:
        raise ConfigError(f"network file {path} must name at least two parties")
    parties: dict[str, PartyEntry] = {}
    for pid, entry in raw.parties.items():
        check_party_id(pid)
        host, _, port = entry.address.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ConfigError(f"party {pid!r} in {path}: address {entry.address!r} is not host:port")
        risk_port = 0
        if entry.risk_address:
            rhost, _, rport = entry.risk_address.rpartition(":")
            if rhost.strip("[]") != host.strip("[]") or not rport.isdigit() or not 0 < int(rport) < 65536 \
                    or int(rport) == int(port):
                raise ConfigError(f"party {pid!r} in {path}: risk_address {entry.risk_address!r} is host:port on "
                                  "the address's host, another port")
            risk_port = int(rport)
        parties[pid] = PartyEntry(pid, host.strip("[]"), int(port), entry.cert, entry.key or path.parent, risk_port)
    return NetworkConfig(raw.name or path.stem, raw.ca, parties, path, raw.records, raw.privacy)


def provision_network(
    out_dir: str | Path, parties: list[str], host: str = "127.0.0.1", base_port: int = 7100, name: str = "veilpay",
    records: str = "frames", risk: list[str] | None = None, risk_base_port: int = 0,
) -> Path:
    """Make a CA, one certificate per party and a network file; returns its path. The
    parties in ``risk`` get a scoring-mesh address at ``risk_base_port`` + their index."""
    if records not in RECORDS:
        raise ConfigError(f"records must be one of {RECORDS}, not {records!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for p in parties:
        check_party_id(p)
    if len(set(parties)) != len(parties) or len(parties) < 2:
        raise ConfigError("need at least two distinct parties")
    ca = make_ca(f"{name} CA")
    write_identity(ca, out / "ca.pem", out / "ca.key")
    lines = [f'name = "{name}"', 'ca = "ca.pem"', f'records = "{records}"', ""]
    for i, p in enumerate(parties):
        write_identity(issue_party_certificate(ca, p), out / f"{p}.pem", out / f"{p}.key")
        lines += [
            f"[parties.{p}]",
            f'address = "{host}:{base_port + i}"',
            *([f'risk_address = "{host}:{risk_base_port + i}"'] if risk and p in risk else []),
            f'cert = "{p}.pem"',
            f'key = "{p}.key"',
            "",
        ]
    net = out / "network.toml"
    net.write_text("\n".join(lines))
    return net
