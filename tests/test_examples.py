"""The shipped example configs load with their loaders, the gateway starts from its
example, and one loader gives every config file the same clear errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from veilpay.errors import ConfigError
from veilpay.gateway.config import GatewayConfig, load_config
from veilpay.mcp.config import load_mcp_config
from veilpay.ml.job import load_job
from veilpay.node.config import load_node_config
from veilpay.partners.config import load_partner_config

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_every_example_loads() -> None:
    gw = load_config(EXAMPLES / "gateway.toml")
    assert gw.keys == EXAMPLES / "keys" / "gateway" and gw.database == f"sqlite:///{EXAMPLES}/gateway/gateway.db"
    assert gw.settlement_dir == EXAMPLES / "settlement" and gw.privacy is None
    mpp = load_partner_config(EXAMPLES / "mpp.toml")
    assert str(mpp.fx["JPY/PHP"]) == "0.3812" and mpp.host_port == ("127.0.0.1", 8101)
    acqp = load_partner_config(EXAMPLES / "acqp.toml")
    assert acqp.authority == EXAMPLES / "authority" / "authority.json"
    mcp = load_mcp_config(EXAMPLES / "acqp.toml")
    assert mcp.per_call == {"JPY": 50000} and mcp.keys == acqp.keys
    node = load_node_config(EXAMPLES / "node.toml")
    assert node.policy.clip_of("JPY") == 50000
    job = load_job(EXAMPLES / "job.toml")
    assert job.model_type == "ss-xgb" and job.network == EXAMPLES / "net" / "network.toml"
    names = {p.name for p in EXAMPLES.glob("*.toml")}
    assert names == {"gateway.toml", "mpp.toml", "acqp.toml", "node.toml", "job.toml"}, "load every example here"


@pytest.mark.parametrize(("edit", "match"), [
    (lambda s: s.replace("mpp_timeout_s = 5", 'mpp_timeout_s = "five"'), r"gateway.toml:\d+: \[gateway\] mpp_timeout_s"),
    (lambda s: s.replace("mpp_timeout_s = 5", "mpp_timeout_s = -1"), r":\d+: \[gateway\] mpp_timeout_s .*greater than 0"),
    (lambda s: s.replace("mpp_timeout_s = 5", "mpp_timout_s = 5"), r":\d+: \[gateway\] mpp_timout_s is not a known key"),
    (lambda s: s.replace('keys = "keys/gateway"', ""), r"\[gateway\] keys is required"),
    (lambda s: s.replace('listen = "127.0.0.1:8100"', 'listen = "8100"'), r":\d+: \[gateway\] listen .*host:port"),
    (lambda s: s.replace("# [gateway.privacy]\n# protocol = \"semi2k\"\n# nodes", "[gateway.privacy]\nprotocol = "
                         "\"spdz\"\nnodes"), r"\[gateway\] privacy.protocol"),
    (lambda s: s.replace("[gateway]", "[gateway"), "not TOML"),
])
def test_config_errors_name_the_file_line_and_key(tmp_path: Path, edit: Any, match: str) -> None:
    p = tmp_path / "gateway.toml"
    p.write_text(edit((EXAMPLES / "gateway.toml").read_text()))
    with pytest.raises(ConfigError, match=match):
        load_config(p)


@pytest.mark.parametrize(("loader", "example", "key"), [
    (load_partner_config, "mpp.toml", "partner"), (load_node_config, "node.toml", "node"),
    (load_mcp_config, "acqp.toml", "mcp"), (load_job, "job.toml", "job"),
])
def test_every_loader_refuses_an_unknown_key_by_line(tmp_path: Path, loader: Any, example: str, key: str) -> None:
    text = (EXAMPLES / example).read_text().replace(f"[{key}]\n", f"[{key}]\nsurprise = 1\n", 1)
    (tmp_path / example).write_text(text)
    line = text.splitlines().index("surprise = 1") + 1
    with pytest.raises(ConfigError, match=rf"{example}:{line}: .*surprise"):
        loader(tmp_path / example)


def test_values_built_in_code_are_checked_as_well() -> None:
    with pytest.raises(ValueError, match="mpp_timeout_s"):
        GatewayConfig(keys=Path("k"), database="sqlite:///x", partners=[], authority=Path("a"), key_log=Path("l"),
                      mpp_timeout_s="five")  # type: ignore[arg-type]


@pytest.mark.tcp
def test_the_gateway_starts_from_its_example(tmp_path: Path) -> None:
    """The example as a new operator would use it: copied beside the keys and the
    authority the README creates, then served."""
    from veilpay.cli.localnet import free_port
    from veilpay.sdk import create_party
    from veilpay.sdk.authority import certify, create_authority

    shutil.copy(EXAMPLES / "gateway.toml", tmp_path / "gateway.toml")
    port = free_port()
    text = (tmp_path / "gateway.toml").read_text().replace("127.0.0.1:8100", f"127.0.0.1:{port}")
    (tmp_path / "gateway.toml").write_text(text)
    create_authority(tmp_path / "authority", "example network")
    create_party(tmp_path / "keys" / "gateway", "gateway", "gateway")
    create_party(tmp_path / "keys" / "mpp-1", "mpp-1", "mpp", endpoint="http://127.0.0.1:8101", code_prefixes=["2810"])
    create_party(tmp_path / "keys" / "acqp-1", "acqp-1", "acqp", notify_url="http://127.0.0.1:8102/notify")
    for p in ("mpp-1", "acqp-1"):
        certify(tmp_path / "authority", tmp_path / "keys" / p / "public.json")
    with open(tmp_path / "stderr", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "veilpay.cli.main", "gateway", "serve", "--config",
                                 str(tmp_path / "gateway.toml")], stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError((tmp_path / "stderr").read_text())
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert r.status_code == 200
        assert (tmp_path / "gateway" / "gateway.db").exists()
    finally:
        proc.terminate()
        proc.wait(10)
