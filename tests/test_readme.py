"""The README's commands work as written (``make readme-check``): its "Running the
gateway" blocks, shell and Python, run in one shell in an empty folder with the
project's ``.venv`` first on the PATH, and the cross-machine program example runs
with its three parties. Only what a reader supplies is filled in: the payment code
the wallet printed, and the two other parties' lines of the last example."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
WAIT = '''wait_for() {  # until something answers on 127.0.0.1:$1
  for _ in $(seq 300); do
    python -c "import socket,sys; socket.create_connection(('127.0.0.1', $1), 0.2)" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing on port $1" >&2; return 1
}
'''


def _section(title: str) -> str:
    start = README.index(f"## {title}")
    end = README.find("\n## ", start + 1)
    return README[start:end if end > 0 else None]


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def _bash(script: str, cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    env_path = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    return subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={"PATH": env_path, "HOME": str(cwd), "PYTHONUNBUFFERED": "1"})


@pytest.mark.tcp
def test_running_the_gateway_as_written(tmp_path: Path) -> None:
    section = _section("Running the gateway").split("### Privacy nodes")[0]
    setup, wallet, rotate = _blocks(section, "sh")
    (python,) = _blocks(section, "python")
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    # the reader waits for the servers before the next command, and copies the code the wallet printed
    setup = setup.replace("veilpay keys monitor", "wait_for 8100; wait_for 8101; wait_for 8102\nveilpay keys monitor")
    wallet = wallet.replace("veilpay partner code --config mpp.toml --user u1",
                            "veilpay partner code --config mpp.toml --user u1 > code.json")
    python = python.replace('scanned_code = "2810..."', 'scanned_code = json.load(open("code.json"))["code"]')
    rotate = rotate.replace("kill %3; wait %3; ", "kill %3; wait %3 2>/dev/null || true; ") + "wait_for 8102\n"
    assert "wait %3 2>/dev/null" in rotate  # the README's restart line, made safe under set -e
    again = python.replace("7001", "7002")  # after the rotation: a new payment, on the acquirer's new key
    wallet_again = wallet.replace("--user u1", "--user u2")
    script = (WAIT + "set -e\ntrap 'kill $(jobs -p) 2>/dev/null' EXIT\n" + setup + wallet
              + f"python - <<'PY'\n{python}PY\n" + rotate + wallet_again + f"python - <<'PY'\n{again}PY\n"
              + "veilpay keys monitor --keys keys/acqp-1 --authority authority/authority.json "
                "--gateway-url http://127.0.0.1:8100 > monitor.json\n")
    done = _bash(script, tmp_path, 240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    paid = [line for line in done.stdout.splitlines() if line.startswith("SUCCESS")]
    assert len(paid) == 4 and all(line.startswith("SUCCESS S") for line in paid[::2]), done.stdout[-2000:]
    report = json.loads((tmp_path / "monitor.json").read_text())
    assert report["foreign"] == [] and report["entries_in_my_name"] == 3  # created, rotated, retired


@pytest.mark.tcp
def test_the_cross_machine_example_runs(tmp_path: Path) -> None:
    (block,) = _blocks(_section("Running a program across machines"), "sh")
    lines = block.replace("\\\n", " ").splitlines()
    keys = next(x for x in lines if x.startswith("veilpay keys"))
    node = next(x for x in lines if x.startswith("veilpay node"))
    others = {"wallet-b": "[860.0, 912.5, 1005.25, 998.0, 1120.75, 1240.0, 1011.5]",
              "wallet-c": "[2140.0, 2011.25, 1987.5, 2210.0, 2305.75, 2422.0, 2119.25]"}
    runs = [node + " > a.json & pa=$!"]
    for party, volumes in others.items():
        line = node.replace("--party wallet-a", f"--party {party}")
        runs.append(re.sub(r'"volumes": \[[^\]]*\]', f'"volumes": {volumes}', line) + f" > {party[-1]}.json & "
                    f"p{party[-1]}=$!")
    done = _bash("set -e\n" + keys + "\n" + "\n".join(runs) + "\nwait $pa; wait $pb; wait $pc\n", tmp_path, 180)
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads((tmp_path / f"{p}.json").read_text()) for p in "abc"]
    assert {round(r["learned_network_total"], 2) for r in results} == {31892.75}
