from __future__ import annotations

import secrets
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from veilpay.cli.demo import _free_port_base
from veilpay.cli.launch import launch
from veilpay.errors import PeerAuthenticationError, ProtocolError, ProtocolTimeout
from veilpay.net import connect_mesh, load_network, provision_network

pytestmark = pytest.mark.tcp
ROOT = Path(__file__).resolve().parent


@pytest.mark.parametrize("protocol", ["semi2k", "aby3"])
def test_program_runs_as_processes_over_tls(tmp_path: Path, protocol: str) -> None:
    net = provision_network(tmp_path, ["p0", "p1", "p2"], base_port=_free_port_base())
    x0, x1 = [1.5, -2.0, 3.25, 0.5], [2.0, 4.0, -1.0, 0.5]
    res = launch(str(net), "tcp_programs:mul_and_compare", protocol, {"p0": {"x": x0}, "p1": {"x": x1}},
                 timeout=120, extra_env={"PYTHONPATH": str(ROOT)})
    for p in ("p0", "p1", "p2"):
        np.testing.assert_allclose(res[p]["mul"], np.multiply(x0, x1), atol=1e-4)
        assert res[p]["lt"] == [int(a < b) for a, b in zip(x0, x1, strict=True)]
        np.testing.assert_allclose(res[p]["relu"], np.maximum(np.subtract(x0, x1), 0), atol=1e-4)


@pytest.mark.parametrize("protocol", ["semi2k", "aby3"])
def test_killed_party_gives_peer_disconnected(tmp_path: Path, protocol: str) -> None:
    net = provision_network(tmp_path, ["p0", "p1", "p2"], base_port=_free_port_base())
    t0 = time.monotonic()
    with pytest.raises(ProtocolError) as info:
        launch(str(net), "tcp_programs:die_midway", protocol, {"p2": {"die": True}}, timeout=60,
               extra_env={"PYTHONPATH": str(ROOT)})
    # The survivors name the dead peer, well before the 60 s message timeout.
    assert time.monotonic() - t0 < 30
    msg = str(info.value)
    assert "p2: exit 3" in msg
    assert "PeerDisconnected: peer 'p2'" in msg


def test_certificate_from_another_ca_is_refused(tmp_path: Path) -> None:
    port = _free_port_base()
    good = load_network(provision_network(tmp_path / "good", ["p0", "p1"], base_port=port))
    rogue = load_network(provision_network(tmp_path / "rogue", ["p0", "p1"], base_port=port))
    errors = _two_parties(good, rogue, secrets.token_bytes(16))
    assert isinstance(errors["p0"], PeerAuthenticationError | ProtocolTimeout)
    assert isinstance(errors["p1"], PeerAuthenticationError | ProtocolTimeout)
    assert any(isinstance(e, PeerAuthenticationError) for e in errors.values())
    # Every socket of the refused handshakes was closed: an unclosed one warns (an error here) when collected.
    errors.clear()
    import gc
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], [str(w.message) for w in caught]


def test_demo_runs(tmp_path: Path) -> None:
    from veilpay.cli.demo import run_demo

    res = run_demo(tmp_path)
    assert {r["learned_above_average"] for r in res.values()} == {True, False}


def test_a_send_waits_for_a_slow_reader_as_long_as_the_timeout(tmp_path: Path) -> None:
    """A sender whose peer is busy for longer than the connect phase's 5 s socket
    timeout must keep waiting (up to the message timeout), not fail the write."""
    net = load_network(provision_network(tmp_path, ["p0", "p1"], base_port=_free_port_base()))
    session = secrets.token_bytes(16)
    big = np.arange(6 << 20, dtype=np.uint64)  # 48 MiB: far more than both socket buffers
    out: dict[str, object] = {}

    def party(me: str) -> None:
        try:
            comm = connect_mesh(net, me, session, timeout=30, connect_timeout=10)
            try:
                if me == "p0":
                    comm.exchange("big", {"p1": [big]})
                    out[me] = comm.exchange("ack", recv={"p1": 1})["p1"][0]
                else:
                    time.sleep(6.5)  # busy: reads nothing for longer than 5 s
                    got = comm.exchange("big", recv={"p0": 1})["p0"][0]
                    comm.exchange("ack", {"p0": [np.array([int(np.array_equal(got, big))], dtype=np.uint64)]})
                    comm.flush()
                    out[me] = True
            finally:
                comm.close()
        except BaseException as exc:  # noqa: BLE001
            out[me] = exc

    ts = [threading.Thread(target=party, args=(p,)) for p in ("p0", "p1")]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=60)
    assert out["p1"] is True
    assert isinstance(out["p0"], np.ndarray) and out["p0"].tolist() == [1]


def _two_parties(good: object, rogue: object, session: bytes) -> dict[str, BaseException]:
    errors: dict[str, BaseException] = {}

    def party(net, me: str) -> None:  # type: ignore[no-untyped-def]
        try:
            connect_mesh(net, me, session, timeout=3, connect_timeout=3).close()
        except BaseException as exc:  # noqa: BLE001
            errors[me] = exc

    ts = [threading.Thread(target=party, args=(good, "p0")), threading.Thread(target=party, args=(rogue, "p1"))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=20)
    return errors


def test_a_peer_certified_by_a_root_in_the_os_trust_store_is_refused(tmp_path: Path, monkeypatch: Any) -> None:
    """An impostor for p1 with a certificate from a CA the operating system trusts (an
    enterprise inspection root, say; here SSL_CERT_FILE points at it) is refused by p0
    on both sides of the link: links trust only the network's CA."""
    port = _free_port_base()
    good = load_network(provision_network(tmp_path / "good", ["p0", "p1"], base_port=port))
    rogue = load_network(provision_network(tmp_path / "rogue", ["p0", "p1"], base_port=port))
    monkeypatch.setenv("SSL_CERT_FILE", str(rogue.ca))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "empty"))
    # the impostor itself accepts anyone: its trust list holds the network's CA too
    rogue.ca.write_bytes(rogue.ca.read_bytes() + good.ca.read_bytes())
    errors = _two_parties(good, rogue, secrets.token_bytes(16))
    assert isinstance(errors.get("p0"), PeerAuthenticationError), errors  # p0 sent the impostor nothing


def test_a_certificate_of_another_party_at_its_address_is_refused(tmp_path: Path) -> None:
    """p2's genuine network certificate, presented at p1's address, is not p1's: p0
    refuses it although the network's CA signed it."""
    port = _free_port_base()
    path = provision_network(tmp_path, ["p0", "p1", "p2"], base_port=port)
    honest = load_network(path)
    swapped = load_network(path)
    swapped.parties["p1"] = type(swapped.parties["p1"])("p1", swapped.parties["p1"].host, swapped.parties["p1"].port,
                                                      swapped.parties["p2"].cert, swapped.parties["p2"].key)
    errors = _two_parties(honest, swapped, secrets.token_bytes(16))
    assert isinstance(errors["p0"], PeerAuthenticationError), errors
    assert "names another party" in str(errors["p0"]) or "certificate" in str(errors["p0"])


def test_certificates_name_the_party_and_no_host(tmp_path: Path) -> None:
    from cryptography import x509

    from veilpay.errors import ConfigError

    net = load_network(provision_network(tmp_path, ["p0", "p1"], base_port=_free_port_base()))
    cert = x509.load_pem_x509_certificate(net.parties["p0"].cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(n.value) for n in san] == ["veilpay:party:p0"]
    assert not san.get_values_for_type(x509.DNSName) and not san.get_values_for_type(x509.IPAddress)
    for name in ("localhost", "ip6-localhost"):
        with pytest.raises(ConfigError):
            provision_network(tmp_path / name, ["p0", name])


@pytest.mark.parametrize("link", ["tls", "in-memory"])
def test_a_peer_that_hangs_up_is_seen_on_an_idle_link_without_reading(tmp_path: Path, link: str) -> None:
    """`peer_hung_up` looks at the socket without reading or waiting: False while the
    peer is there, or while something it sent is still unread; True once it has closed
    its end and every message it sent has been read."""
    from veilpay.net import local_mesh

    if link == "in-memory":
        mesh = local_mesh(["p0", "p1"])
    else:
        net = load_network(provision_network(tmp_path, ["p0", "p1"], base_port=_free_port_base()))
        session = secrets.token_bytes(16)
        mesh = {}

        def connect(me: str) -> None:
            mesh[me] = connect_mesh(net, me, session, timeout=10, connect_timeout=10)

        ts = [threading.Thread(target=connect, args=(p,)) for p in ("p0", "p1")]
        for t in ts:
            t.start()
        for t in ts:
            t.join(timeout=30)
    a, b = mesh["p0"], mesh["p1"]
    try:
        assert not a.peer_hung_up("p1")
        b.exchange("last", {"p0": [np.arange(3, dtype=np.uint64)]})
        b.flush()
        b.close()
        time.sleep(0.2)
        assert not a.peer_hung_up("p1")  # its last message is still unread
        assert a.exchange("last", recv={"p1": 1})["p1"][0].tolist() == [0, 1, 2]
        deadline = time.monotonic() + 5
        while not a.peer_hung_up("p1"):
            assert time.monotonic() < deadline, "the hang-up was not seen"
            time.sleep(0.05)
    finally:
        a.close()
