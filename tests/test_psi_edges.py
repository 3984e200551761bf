"""PSI at its edges: a local mistake fails before any connection, parties that would
make different ids from the same keys are refused at both ends before any id is sent,
and unbalanced mode refuses a protocol it does not run."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from parties import run_threads

import veilpay.net
from veilpay.cli.main import main
from veilpay.errors import DataError, InvalidInput, ProtocolMismatch
from veilpay.net import Communicator, local_mesh, provision_network
from veilpay.psi import TERMS_VERSION, Terms, check_psi_files, choose_protocol, run_psi_files, setup_psi_file
from veilpay.psi.terms import LABEL, agree
from veilpay.psi.unbalanced import setup_server


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def two_party(fn_r: Callable[[Communicator], Any], fn_s: Callable[[Communicator], Any]) -> tuple[Any, Any, dict[str, Any]]:
    """Both results and, per party, the statistics labels of what it sent."""
    sent: dict[str, Any] = {}

    def counted(name: str, fn: Callable[[Communicator], Any]) -> Callable[[Communicator], Any]:
        def go(c: Communicator) -> Any:
            try:
                return fn(c)
            finally:
                sent[name] = {label for label, s in c.stats().items() if s.bytes_sent}

        return go

    out = run_threads({"r": counted("r", fn_r), "s": counted("s", fn_s)}, timeout=20, join=60)
    return out["r"], out["s"], sent


# -- the input is checked before any connection ---------------------------------------------

@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return provision_network(tmp_path_factory.mktemp("net"), ["wallet", "acquirer"], base_port=7100)


@pytest.fixture
def no_connection(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Replaces connect_mesh: a call is recorded and fails, so a test sees whether the
    CLI tried to reach the peer at all."""
    calls: list[str] = []

    def connect(*args: Any, **kwargs: Any) -> Any:
        calls.append("connect_mesh")
        raise AssertionError("connected before checking the input")

    monkeypatch.setattr(veilpay.net, "connect_mesh", connect)
    yield calls


def _bad_inputs(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """Name -> (psi arguments for the receiver, the error's text)."""
    good = write(tmp / "good.csv", "cid,v\na,1\n")
    write(tmp / "empty.csv", "")
    (tmp / "latin1.csv").write_bytes("cïd,v\n".encode("latin-1"))
    (tmp / "folder.csv").mkdir()
    out = ["--output", str(tmp / "o.csv")]

    def file(name: str, key: str = "cid") -> list[str]:
        return ["--input", str(tmp / name), "--key", key, *out]

    return {
        "missing file": (file("nope.csv"), f"DataError: {tmp / 'nope.csv'}: cannot read"),
        "empty file": (file("empty.csv"), f"DataError: {tmp / 'empty.csv'}: empty file"),
        "not UTF-8": (file("latin1.csv"), f"DataError: {tmp / 'latin1.csv'}: not UTF-8"),
        "a folder": (file("folder.csv"), f"DataError: {tmp / 'folder.csv'}: cannot read"),
        "missing key column": (file("good.csv", "customer_id"), f"DataError: {good}: no column 'customer_id'"),
        "missing output column": ([*file("good.csv"), "--columns", "cid,w"], f"InvalidInput: {good}: no column 'w'"),
        "no key": (["--input", str(good), *out], "InvalidInput: name at least one key column"),
        "no input": (["--key", "cid", *out], "InvalidInput: give an input file"),
        "no output": (["--input", str(good), "--key", "cid"], "InvalidInput: this party learns"),
    }


BAD_INPUTS = ["missing file", "empty file", "not UTF-8", "a folder", "missing key column", "missing output column",
              "no key", "no input", "no output"]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_a_local_mistake_fails_at_once_and_never_connects(tmp_path: Path, network: Path, no_connection: list[str],
                                                          capsys: pytest.CaptureFixture[str], case: str) -> None:
    """Each of these used to connect first, wait ~31 s for a peer that was not there,
    then blame it; now each fails within a couple of seconds, with a named error on one
    line, and connect_mesh is never called."""
    args, want = _bad_inputs(tmp_path)[case]
    t0 = time.monotonic()
    rc = main(["psi", "--role", "receiver", "--network", str(network), "--party", "wallet", *args])
    took = time.monotonic() - t0
    err = capsys.readouterr().err
    assert rc == 2 and want in err and err.count("\n") == 1, err
    assert took < 2.0
    assert no_connection == []


def test_the_unbalanced_server_checks_its_prepared_set_before_connecting(tmp_path: Path, network: Path,
                                                                          no_connection: list[str],
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    base = ["psi", "--role", "sender", "--network", str(network), "--party", "acquirer", "--mode", "unbalanced"]
    assert main([*base, "--cache", str(tmp_path / "nothing")]) == 2
    assert "DataError" in capsys.readouterr().err
    setup_server([b"a", b"b"], tmp_path / "old")  # a set that does not record how its ids were made
    assert main([*base, "--cache", str(tmp_path / "old")]) == 2
    assert "prepare it again (veilpay psi-setup)" in capsys.readouterr().err
    assert no_connection == []


def test_run_psi_files_sends_nothing_for_a_missing_input(tmp_path: Path) -> None:
    mesh = local_mesh(["r", "s"], timeout=5)
    with pytest.raises(DataError, match="nope.csv: cannot read"):
        run_psi_files(mesh["r"], "s", "receiver", tmp_path / "nope.csv", ["cid"], tmp_path / "o.csv")
    assert mesh["r"].total().bytes_sent == 0
    with pytest.raises(DataError, match="no column 'x'"):
        check_psi_files("sender", write(tmp_path / "s.csv", "cid\na\n"), ["x"])


# -- the run's terms: refused at both ends before any id is sent -----------------------------

R_FILE = "cid,cc,v\n A1 ,SG,1\nb2,MY,2\nc3,SG,3\n"
S_FILE = "cid,cc\na1,SG\nB2,MY\nzz,SG\n"

# how the sender differs from a receiver that runs (key cid+cc, normalise trim, reveal receiver)
MISMATCHES: dict[str, tuple[dict[str, Any], str]] = {
    "key count": ({"keys": ["cid"]}, "key columns 2 here, 1 there"),
    "normalisation": ({"normalise": "casefold"}, "--normalise trim here, casefold there"),
    "reveal": ({"reveal": "both"}, "--reveal receiver here, both there"),
    "protocol": ({"other_protocol": True}, "--protocol"),
    "mode": ({"mode": "cardinality"}, "--mode intersection here, cardinality there"),
    "role": ({"role": "receiver"}, "both parties are the receiver"),
}


@pytest.mark.parametrize("protocol", ["kkrt", "ecdh"])
@pytest.mark.parametrize("what", list(MISMATCHES))
def test_parties_that_disagree_fail_at_both_ends(tmp_path: Path, protocol: str, what: str) -> None:
    """Before the terms were agreed, a sender keyed on one column against a receiver
    keyed on two (or normalising otherwise) ran to the end and reported
    intersection_size 0. Now both ends raise ProtocolMismatch naming the difference,
    having sent the terms and nothing else, and no output is written."""
    over, want = MISMATCHES[what]
    over = dict(over)
    if what == "mode" and protocol == "kkrt":
        pytest.skip("cardinality mode runs ECDH only")
    fr, fs = write(tmp_path / "r.csv", R_FILE), write(tmp_path / "s.csv", S_FILE)
    s_protocol = {"kkrt": "ecdh", "ecdh": "kkrt"}[protocol] if over.pop("other_protocol", False) else protocol
    s_kw: dict[str, Any] = {"keys": ["cid", "cc"], "protocol": s_protocol, "role": "sender"} | over
    if s_kw.get("mode") == "cardinality":
        s_kw["protocol"] = "ecdh"
    s_role, s_keys = s_kw.pop("role"), s_kw.pop("keys")
    s_out = tmp_path / "s_out.csv" if s_role == "receiver" or s_kw.get("reveal") == "both" else None
    r, s, sent = two_party(
        lambda c: run_psi_files(c, "s", "receiver", fr, ["cid", "cc"], tmp_path / "r_out.csv", protocol=protocol),
        lambda c: run_psi_files(c, "r", s_role, fs, s_keys, s_out, **s_kw))
    assert isinstance(r, ProtocolMismatch) and isinstance(s, ProtocolMismatch), (r, s)
    assert want in str(r), str(r)
    assert r.peer == "s" and s.peer == "r"
    assert sent == {"r": {LABEL}, "s": {LABEL}}  # the terms, and not one id
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv", "s.csv"]


@pytest.mark.parametrize("protocol", ["kkrt", "ecdh"])
def test_equal_terms_with_other_column_names_run(tmp_path: Path, protocol: str) -> None:
    fr = write(tmp_path / "r.csv", R_FILE)
    fs = write(tmp_path / "s.csv", "customer,country\na1,SG\nB2,MY\nzz,SG\n")
    out = tmp_path / "o.csv"
    r, s, _ = two_party(
        lambda c: run_psi_files(c, "s", "receiver", fr, ["cid", "cc"], out, normalise="casefold", protocol=protocol),
        lambda c: run_psi_files(c, "r", "sender", fs, ["customer", "country"], normalise="casefold", protocol=protocol))
    assert r["intersection_size"] == 2 and s["protocol"] == protocol
    assert out.read_text().splitlines() == ["cid,cc,v", " A1 ,SG,1", "b2,MY,2"]


@pytest.fixture
def prepared(tmp_path: Path) -> Path:
    big = write(tmp_path / "big.csv", "cid,cc\n" + "".join(f"c{i},SG\n" for i in range(200)))
    setup_psi_file(big, ["cid", "cc"], tmp_path / "srv", normalise="casefold", workers=0)
    return tmp_path / "srv"


@pytest.mark.parametrize(("client", "want"), [
    ({"keys": ["cid"]}, "key columns 1 here, 2 there"),
    ({"normalise": "trim"}, "--normalise trim here, casefold there"),
])
def test_unbalanced_client_that_keys_otherwise_is_refused_at_both_ends(tmp_path: Path, prepared: Path,
                                                                        client: dict[str, Any], want: str) -> None:
    """The server's terms come from its prepared set (psi-setup records the key count and
    normalisation); a client that differs is refused before its query is charged."""
    small = write(tmp_path / "small.csv", "cid,cc\nC5,SG\nx,SG\n")
    kw: dict[str, Any] = {"keys": ["cid", "cc"], "normalise": "casefold"} | client
    keys = kw.pop("keys")
    r, s, sent = two_party(
        lambda c: run_psi_files(c, "s", "receiver", small, keys, tmp_path / "o.csv", mode="unbalanced",
                                cache=tmp_path / "cli", **kw),
        lambda c: run_psi_files(c, "r", "sender", None, [], mode="unbalanced", cache=prepared))
    assert isinstance(r, ProtocolMismatch) and isinstance(s, ProtocolMismatch), (r, s)
    assert want in str(r)
    assert sent == {"r": {LABEL}, "s": {LABEL}}
    assert not (prepared / "budget.json").exists()  # nothing charged
    r, s, _ = two_party(  # the same client, keyed as the set was prepared
        lambda c: run_psi_files(c, "s", "receiver", small, ["cid", "cc"], tmp_path / "o.csv", mode="unbalanced",
                                cache=tmp_path / "cli", normalise="casefold"),
        lambda c: run_psi_files(c, "r", "sender", None, [], mode="unbalanced", cache=prepared))
    assert r["intersection_size"] == 1 and s["peer_size"] == 2


# -- unbalanced mode refuses a protocol it does not run --------------------------------------

@pytest.mark.parametrize("protocol", ["ecdh", "kkrt"])
def test_unbalanced_mode_refuses_an_explicit_protocol(tmp_path: Path, network: Path, no_connection: list[str],
                                                      capsys: pytest.CaptureFixture[str], protocol: str) -> None:
    with pytest.raises(InvalidInput, match=f"unbalanced mode runs its own OPRF on P-256, not {protocol}"):
        choose_protocol(protocol, "unbalanced")
    assert choose_protocol(None, "unbalanced") == "oprf-p256"
    with pytest.raises(InvalidInput, match="mode must be one of"):
        choose_protocol(None, "balanced")
    small = write(tmp_path / "small.csv", "cid\na\n")
    for role, args in [("receiver", ["--input", str(small), "--key", "cid", "--output", str(tmp_path / "o.csv")]),
                       ("sender", [])]:
        rc = main(["psi", "--role", role, "--network", str(network), "--party", "wallet", "--mode", "unbalanced",
                   "--cache", str(tmp_path / "c"), "--protocol", protocol, *args])
        err = capsys.readouterr().err
        assert rc == 2 and "InvalidInput: unbalanced mode runs its own OPRF on P-256" in err and "--protocol" in err
    assert no_connection == []


# -- the terms message itself -----------------------------------------------------------------

def test_terms_travel_as_typed_fields() -> None:
    t = Terms("sender", "ecdh", "cardinality", "both", 3, "casefold")
    arr = t.to_array()
    assert arr.dtype == np.uint64 and arr.tolist() == [TERMS_VERSION, 2, 2, 2, 2, 3, 3]
    assert Terms.from_array("p", arr) == t
    bad = arr.copy()
    bad[2] = 9
    with pytest.raises(ProtocolMismatch, match="unknown protocol code 9"):
        Terms.from_array("p", bad)
    with pytest.raises(ProtocolMismatch, match="version 7"):
        Terms.from_array("p", np.array([7, 1], np.uint64))
    with pytest.raises(ProtocolMismatch, match="wrong type"):
        Terms.from_array("p", arr.view(np.uint8))
    with pytest.raises(InvalidInput, match="normalise must be one of"):
        Terms("sender", "ecdh", "intersection", "receiver", 1, "lower")
    with pytest.raises(InvalidInput, match="key columns"):
        Terms("sender", "ecdh", "intersection", "receiver", 0, "trim")


def test_a_peer_that_sends_no_terms_is_a_protocol_mismatch() -> None:
    """An older veilpay starts with its protocol hello: named as such, not a bare wire error."""
    mine = Terms("receiver", "kkrt", "intersection", "receiver", 1, "trim")

    def old_sender(c: Communicator) -> None:
        c.exchange("kkrt.hello", {"r": [np.zeros(64, np.uint8)]})

    r, _, _ = two_party(lambda c: agree(c, "s", mine), old_sender)
    assert isinstance(r, ProtocolMismatch) and "no PSI terms" in str(r) and "kkrt.hello" in str(r)
