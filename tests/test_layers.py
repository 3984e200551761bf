"""The layer picture of docs/design.md holds: imports only point downward, and only
veilpay.crypto imports the crypto libraries (STYLE rule 1, DESIGN's layer list)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "veilpay"
# Bottom to top; the top-level modules (errors, progress, files, packed, host) sit below everything.
LAYERS = ["errors", "progress", "files", "packed", "settings", "host", "db", "crypto", "net", "mpc", "psi", "ml", "risk",
          "sdk", "node", "gateway", "partners", "mcp", "cli"]
# The stdlib ssl module is the transport: net wraps sockets with contexts that
# veilpay.crypto.tls builds, and catches ssl.SSLError.
CRYPTO_LIBS = ("cryptography", "nacl", "Crypto", "hashlib", "hmac")


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "veilpay"


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
    return out


def _modules() -> list[tuple[str, Path]]:
    mods = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        mods.append((".".join(rel.parts), path))
    return mods


def test_every_package_is_placed_in_a_layer() -> None:
    for mod, _ in _modules():
        layer = _layer(mod)
        assert layer in LAYERS or layer in ("__init__", "veilpay"), f"{mod}: add its layer to docs/design.md and here"


def test_imports_point_downward() -> None:
    bad = []
    for mod, path in _modules():
        mine = _layer(mod)
        if mine not in LAYERS:
            continue
        for imp in _imports(path):
            if not imp.startswith("veilpay."):
                continue
            theirs = _layer(imp)
            if theirs in LAYERS and LAYERS.index(theirs) > LAYERS.index(mine):
                bad.append(f"{mod} imports {imp}")
    assert not bad, "upward imports: " + "; ".join(bad)


def test_only_crypto_touches_crypto_libraries() -> None:
    bad = []
    for mod, path in _modules():
        if _layer(mod) == "crypto":
            continue
        for imp in _imports(path):
            if imp.split(".")[0] in CRYPTO_LIBS:
                bad.append(f"{mod} imports {imp}")
    assert not bad, "crypto library imported outside veilpay.crypto: " + "; ".join(bad)


def test_checker_sees_an_upward_import(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("from veilpay.cli.launch import launch\nimport cryptography.x509\n")
    assert "veilpay.cli.launch" in _imports(probe)
    assert LAYERS.index(_layer("veilpay.cli.launch")) > LAYERS.index("net")
