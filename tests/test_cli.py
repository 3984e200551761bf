"""The ``veilpay`` command at its edges: no traceback for a user error or an unreachable
peer (one line and an exit code), ``--debug``, ``--version``, the ``keys`` subcommands'
own required flags, and a newcomer's test wallet and payment code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from veilpay.cli.main import main


def _run(argv: list[str], capsys: Any) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_user_errors_are_one_line_and_exit_2(tmp_path: Path, capsys: Any) -> None:
    for argv in (["node", "run", "--network", "n.toml", "--party", "a", "--program", "p.py", "--args-json", "{bad"],
                 ["gateway", "settle", "--config", str(tmp_path / "missing.toml"), "--date", "2026-12-05"],
                 ["keys", "retire", "--out", str(tmp_path / "nokeys"), "--retire", "1"]):
        code, _, err = _run(argv, capsys)
        assert code == 2, (argv, err)
        assert err.startswith("veilpay: error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_an_unreachable_peer_is_exit_3(tmp_path: Path, capsys: Any) -> None:
    from veilpay.cli.localnet import free_port
    from veilpay.sdk import create_party
    from veilpay.sdk.authority import create_authority

    create_party(tmp_path / "keys" / "acqp-1", "acqp-1", "acqp")
    create_authority(tmp_path / "authority", "n")
    code, _, err = _run(["keys", "monitor", "--keys", str(tmp_path / "keys" / "acqp-1"), "--authority",
                         str(tmp_path / "authority" / "authority.json"), "--gateway-url",
                         f"http://127.0.0.1:{free_port()}"], capsys)
    assert code == 3 and "GatewayUnavailable" in err and "Traceback" not in err


def test_debug_shows_the_traceback_and_version_prints(capsys: Any) -> None:
    with pytest.raises(Exception, match="not JSON"):
        main(["--debug", "node", "run", "--network", "n", "--party", "a", "--program", "p", "--args-json", "{"])
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("veilpay ")


def test_keys_subcommands_require_their_own_flags(tmp_path: Path, capsys: Any) -> None:
    with pytest.raises(SystemExit) as usage:
        main(["keys", "partner", "--out", str(tmp_path / "p")])
    assert usage.value.code == 2 and "--id, --role" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["keys", "network", "--parties", "a,b"])
    assert "--out" in capsys.readouterr().err
    assert main(["keys", "network", "--out", str(tmp_path / "net"), "--parties", "a,b"]) == 0
    assert (tmp_path / "net" / "network.toml").exists()


def test_a_defect_is_one_line_and_exit_70(monkeypatch: Any, capsys: Any) -> None:
    import veilpay.cli.main as cli

    def broken(_: Any) -> int:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli, "_cmd_keys", broken)
    code, _, err = _run(["keys", "network", "--out", "x", "--parties", "a,b"], capsys)
    assert code == 70 and "internal error" in err and "--debug" in err and "Traceback" not in err


@pytest.mark.tcp
def test_a_newcomer_makes_a_wallet_and_a_code_from_the_cli(tmp_path: Path) -> None:
    from veilpay.cli.localnet import LocalNet

    with LocalNet(tmp_path) as net:
        net.start("mpp-1")
        cfg = str(tmp_path / "mpp-1.toml")
        base = [sys.executable, "-m", "veilpay.cli.main", "partner"]
        made = subprocess.run(base + ["wallet", "--config", cfg, "--user", "u9", "--name", "Ana Cruz", "--currency",
                                      "PHP", "--balance", "100000"], capture_output=True, text=True, timeout=60)
        assert made.returncode == 0, made.stderr
        code = subprocess.run(base + ["code", "--config", cfg, "--user", "u9"], capture_output=True, text=True,
                              timeout=60)
        assert code.returncode == 0 and json.loads(code.stdout)["code"].startswith("2810")
        assert net.admin("mpp-1", "GET", "/admin/wallets/u9")["balance"] == 100000
        net.stop("mpp-1")
        down = subprocess.run(base + ["code", "--config", cfg, "--user", "u9"], capture_output=True, text=True,
                              timeout=60)
        assert down.returncode == 3 and "Traceback" not in down.stderr
