"""Settlement totals owed to the partners, as the privacy nodes hand them out and as a
partner puts them back together.

A settlement group is one (acquirer, MPP, currency, kind) of a closed period; kind
``pay`` (payments), ``refund`` (refunds) or ``reversal`` (payments cancelled after
the period they were settled in, taken back in the next). The nodes never reveal a
group's total, to themselves or to the gateway: each share-holding node seals its
share words of the total to the group's acquirer and to its MPP (HPKE, purpose
``settlement``) and signs a statement of what it sealed (Ed25519): the period, the
group, its count, the SHA-256 of its item ids, the recipient and the envelope's
digest. The gateway routes the sealed outputs and learns only the counts, which its
own records already show.

A partner verifies every node's statement against the node's key, opens its own
envelope from each node and adds the words up: semi2k holders each send one word
(x = s0 + s1); aby3's three holders each send two words of the replicated sharing,
and neighbours' copies of the same component must agree (x = c0 + c1 + c2), so a
single node that sends a wrong word is caught. ``assemble`` turns the gateway's
per-partner settlement document into the Alipay+-shaped ``summary.csv`` and
``detail.csv``, opening each transaction's amount sealed to the partner and checking
that a group's transactions add up to the total the nodes computed."""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veilpay.crypto.digest import sha256
from veilpay.crypto.signing import b64d, b64e
from veilpay.errors import DecryptionError, InvalidInput, SignatureError
from veilpay.files import atomic_write
from veilpay.sdk import wirejson
from veilpay.sdk.envelope import is_envelope, open_fields, seal_fields
from veilpay.sdk.keys import PartyKeys, PublicEntry
from veilpay.sdk.money import MAX_VALUE
from veilpay.sdk.shares import RING_WORD, Privacy, envelope_digest, open_amount

__all__ = ["GROUP_KINDS", "Settlement", "assemble", "ids_digest", "open_total", "output_context", "seal_output",
           "summaries"]

GROUP_KINDS = ("pay", "refund", "reversal")
_LABEL = b"veilpay/settlement-output/v1\n"
_MOD = 1 << 64
_STMT = ("v", "node", "to", "period", "acqp", "mpp", "currency", "kind", "count", "ids", "env")
SUMMARY_COLUMNS = ["settlementDate", "acquirerId", "pspId", "currency", "paymentCount", "paymentTotal",
                   "refundCount", "refundTotal", "netSettlementAmount"]
DETAIL_COLUMNS = ["transactionId", "transactionRequestId", "transactionType", "acquirerId", "pspId", "currency",
                  "transactionTime", "transactionAmount", "settlementStatus"]
_TYPES = {"pay": "PAYMENT", "refund": "REFUND", "reversal": "CANCEL"}


def output_context(period: str, acqp: str, mpp: str, currency: str, kind: str) -> str:
    return f"{period}/{acqp}/{mpp}/{currency}/{kind}"


def ids_digest(ids: list[str]) -> str:
    """SHA-256 (hex) of a group's item ids, sorted, one per line."""
    return sha256("\n".join(sorted(ids)).encode()).hex()


def _message(stmt: dict[str, Any]) -> bytes:
    return _LABEL + wirejson.dumps_sorted(stmt)


def seal_output(me: PartyKeys, to: PublicEntry, period: str, group: dict[str, Any], ids: list[str],
                words: list[int]) -> dict[str, Any]:
    """Node ``me``'s share ``words`` of one group's total, sealed to partner ``to``, with
    the signed statement of what it sealed. ``group`` holds acqp, mpp, currency, kind and count."""
    ctx = output_context(period, group["acqp"], group["mpp"], group["currency"], group["kind"]) + "/" + me.id
    env = seal_fields({"s": [str(int(w) % _MOD) for w in words]}, to, "settlement", ctx)
    stmt = {"v": 1, "node": me.id, "to": to.id, "period": period, "acqp": group["acqp"], "mpp": group["mpp"],
            "currency": group["currency"], "kind": group["kind"], "count": int(group["count"]), "ids": ids_digest(ids),
            "env": envelope_digest(env)}
    version, key = me.signer()
    return {"stmt": stmt, "env": env, "kv": version, "sig": b64e(key.sign(_message(stmt)))}


def _verified_words(out: Any, node: PublicEntry, me: PartyKeys, words: int) -> tuple[dict[str, Any], list[int]]:
    """(statement, share words) of one node's output for ``me``: its signature checked
    against ``node``'s key, its envelope the one the statement names, opened."""
    if not isinstance(out, dict) or set(out) != {"stmt", "env", "kv", "sig"}:
        raise DecryptionError(f"settlement output of {node.id}: malformed")
    stmt = out["stmt"]
    if not isinstance(stmt, dict) or set(stmt) != set(_STMT) or stmt["v"] != 1:
        raise DecryptionError(f"settlement output of {node.id}: malformed statement")
    key = node.verify_key(out["kv"]) if isinstance(out["kv"], int) and not isinstance(out["kv"], bool) else None
    try:
        sig = b64d(out["sig"])
    except ValueError:
        sig = b""
    if key is None or not key.verify(sig, _message(stmt)):
        raise SignatureError(f"settlement output of {node.id}: its statement is not signed by that node")
    if stmt["node"] != node.id or stmt["to"] != me.id:
        raise DecryptionError(f"settlement output of {node.id}: made by {stmt['node']!r} for {stmt['to']!r}")
    if not is_envelope(out["env"]) or envelope_digest(out["env"]) != stmt["env"]:
        raise DecryptionError(f"settlement output of {node.id}: the envelope is not the one it signed")
    ctx = output_context(stmt["period"], stmt["acqp"], stmt["mpp"], stmt["currency"], stmt["kind"]) + "/" + node.id
    raw = open_fields(out["env"], me, "settlement", ctx).get("s")
    if not isinstance(raw, list) or len(raw) != words or not all(
            isinstance(w, str) and RING_WORD.match(w) and int(w) < _MOD for w in raw):
        raise DecryptionError(f"settlement output of {node.id}: expected {words} ring elements")
    return stmt, [int(w) for w in raw]


def open_total(outputs: Any, me: PartyKeys, nodes: dict[str, PublicEntry], privacy: Privacy) -> tuple[dict[str, Any], int]:
    """(the nodes' common statement, the total) of one group owed to ``me``, from every
    share-holding node's output. DecryptionError or SignatureError when an output is
    missing, unsigned, not for ``me``, or the nodes' statements or words disagree."""
    if not isinstance(outputs, dict) or set(outputs) != set(privacy.nodes):
        raise DecryptionError(f"settlement outputs: one from each of {', '.join(privacy.nodes)}")
    stmts, words = [], []
    for n in privacy.nodes:
        entry = nodes.get(n)
        if entry is None or entry.role != "node":
            raise SignatureError(f"settlement output: no key for privacy node {n!r}", "KEY_NOT_FOUND")
        s, w = _verified_words(outputs[n], entry, me, privacy.words)
        stmts.append({k: v for k, v in s.items() if k not in ("node", "env")})
        words.append(w)
    if any(s != stmts[0] for s in stmts[1:]):
        raise DecryptionError("settlement outputs: the nodes' statements differ")
    if privacy.protocol == "semi2k":
        total = (words[0][0] + words[1][0]) % _MOD
    else:
        if any(words[i][1] != words[(i + 1) % 3][0] for i in range(3)):
            raise DecryptionError("settlement outputs: the nodes' replicated shares disagree")
        total = sum(w[0] for w in words) % _MOD
    count = stmts[0]["count"]
    if not isinstance(count, int) or count < 0 or total > count * MAX_VALUE:
        raise DecryptionError("settlement outputs: the total is outside what its count allows")
    return stmts[0], total


def summaries(groups: Any, me: PartyKeys, nodes: dict[str, PublicEntry], privacy: Privacy) -> list[dict[str, Any]]:
    """Per currency, the acquirer ``me``'s counts and totals over the settlement groups
    the gateway returned (``settlementSummary``): payments, refunds (reversals of
    payments settled earlier count as refunds) and net, each total opened here."""
    if not isinstance(groups, list):
        raise DecryptionError("settlement: 'groups' is not a list")
    sums: dict[str, dict[str, int]] = {}
    for g in groups:
        stmt, total = open_total(g.get("outputs") if isinstance(g, dict) else None, me, nodes, privacy)
        s = sums.setdefault(stmt["currency"], {"pc": 0, "pt": 0, "rc": 0, "rt": 0})
        if stmt["kind"] == "pay":
            s["pc"] += stmt["count"]
            s["pt"] += total
        else:
            s["rc"] += stmt["count"]
            s["rt"] += total

    def amount(cur: str, v: int) -> dict[str, str]:
        return {"currency": cur, "value": str(v)}

    return [{"currency": cur, "paymentCount": s["pc"], "paymentTotal": amount(cur, s["pt"]), "refundCount": s["rc"],
             "refundTotal": amount(cur, s["rt"]), "netTotal": amount(cur, s["pt"] - s["rt"])}
            for cur, s in sorted(sums.items())]


@dataclass
class Settlement:
    """A partner's settlement of one period, assembled on the partner's side."""

    period: str
    summary: list[list[Any]] = field(default_factory=list)
    detail: list[list[Any]] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)  # groups whose transactions do not add up to the total

    def write(self, folder: str | Path) -> None:
        """``summary.csv`` and ``detail.csv`` into ``folder`` (each written atomically)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name, header, rows in (("summary.csv", SUMMARY_COLUMNS, self.summary),
                                   ("detail.csv", DETAIL_COLUMNS, self.detail)):
            def write(fh: Any, header: list[str] = header, rows: list[list[Any]] = rows) -> None:
                w = csv.writer(fh, lineterminator="\n")
                w.writerow(header)
                w.writerows(rows)
            atomic_write(folder / name, write)


def assemble(doc: Any, me: PartyKeys, nodes: dict[str, PublicEntry], privacy: Privacy) -> Settlement:
    """The settlement files of ``me`` from the gateway's settlement document for it:
    every group's total opened from the nodes' outputs, every transaction's amount
    opened from the value sealed to ``me``. InvalidInput for a document that is not
    one; DecryptionError or SignatureError for outputs that do not verify."""
    if not isinstance(doc, dict) or doc.get("v") != 1 or doc.get("partner") != me.id or not isinstance(
            doc.get("groups"), list) or not isinstance(doc.get("transactions"), list):
        raise InvalidInput(f"not a settlement document for {me.id!r}")
    period = str(doc.get("period", ""))
    txs = {t.get("id"): t for t in doc["transactions"] if isinstance(t, dict)}
    out = Settlement(period)
    rows: dict[tuple[str, str, str], dict[str, int]] = {}
    for g in doc["groups"]:
        stmt, total = open_total(g.get("outputs") if isinstance(g, dict) else None, me, nodes, privacy)
        ids = g.get("ids") if isinstance(g.get("ids"), list) else []
        if stmt["period"] != period or ids_digest([str(i) for i in ids]) != stmt["ids"] or len(ids) != stmt["count"]:
            raise DecryptionError(f"settlement group {stmt['acqp']}/{stmt['mpp']}/{stmt['currency']}/{stmt['kind']}: "
                                  "its transactions are not the ones the nodes totalled")
        r = rows.setdefault((stmt["acqp"], stmt["mpp"], stmt["currency"]), {"pc": 0, "pt": 0, "rc": 0, "rt": 0})
        if stmt["kind"] == "pay":
            r["pc"], r["pt"] = r["pc"] + stmt["count"], r["pt"] + total
        else:
            r["rc"], r["rt"] = r["rc"] + stmt["count"], r["rt"] + total
        seen = 0
        for i in sorted(ids, key=lambda i: (txs.get(i, {}).get("time", 0), i)):
            t = txs.get(i)
            if t is None:
                raise DecryptionError(f"settlement: transaction {str(i)[:40]} of a group is missing from the document")
            _, value = open_amount({"currency": t["currency"], "sealed": {me.id: t.get("sealed")}}, me,
                                   "pay" if t["kind"] in ("pay", "reversal") else "refund", t["acqp"], t["requestId"])
            seen += value
            out.detail.append([t["id"], t["requestId"], _TYPES[stmt["kind"]], t["acqp"], t["mpp"], t["currency"],
                               time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t["time"] / 1000)), value, "SETTLED"])
        if seen != total:
            out.mismatches.append(f"{stmt['acqp']}/{stmt['mpp']}/{stmt['currency']}/{stmt['kind']}: the nodes' total "
                                  f"{total} is not the {seen} sealed to {me.id}")
        for i, why in sorted((g.get("excluded") or {}).items()):
            t = txs.get(i)
            if t is not None:
                out.detail.append([t["id"], t["requestId"], _TYPES.get(t["kind"], "PAYMENT"), t["acqp"], t["mpp"],
                                   t["currency"], time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t["time"] / 1000)),
                                   "", str(why)])
    out.summary = [[period, a, m, c, r["pc"], r["pt"], r["rc"], r["rt"], r["pt"] - r["rt"]]
                   for (a, m, c), r in sorted(rows.items())]
    return out
