"""One loader for every config file (TOML): the gateway's, a partner's, the MCP
server's, a privacy node's, a network file and a training job.

Each config is a pydantic dataclass (pydantic v2, strict): every key typed, unknown
keys refused, values checked on construction as on loading (a timeout of ``"five"``
is refused when the file is read, not on the first request). ``load_table`` reads one
table of a file and turns any problem into a ConfigError that names the file, the
line, the key and what is wrong. Paths (``RelPath``) and SQLite URLs (``DbUrl``) are
resolved against the file's folder here, in one place; values built in code are
taken as given."""

from __future__ import annotations

import json
import re
import tomllib
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BeforeValidator, ConfigDict, TypeAdapter, ValidationError, ValidationInfo
from pydantic.dataclasses import dataclass

from veilpay.errors import ConfigError

__all__ = ["STRICT", "DbUrl", "DecimalText", "DecimalValue", "ListenAddr", "PrivacySection", "RelPath", "load_doc",
           "load_table", "parse_table"]

T = TypeVar("T")

# every config dataclass uses this: strict types (TOML has its own), no unknown keys
STRICT = ConfigDict(strict=True, extra="forbid", arbitrary_types_allowed=True)


def _base(info: ValidationInfo) -> Path | None:
    ctx = info.context
    return ctx.get("base") if isinstance(ctx, dict) else None


def _rel_path(v: Any, info: ValidationInfo) -> Any:
    if isinstance(v, str):
        if not v:
            raise ValueError("an empty path")
        p, base = Path(v), _base(info)
        p = p if p.is_absolute() or base is None else base / p
        return str(p) if info.mode == "json" else p  # the strict Path type takes text only from JSON
    return v


def _db_url(v: Any, info: ValidationInfo) -> Any:
    base = _base(info)
    if isinstance(v, str) and base is not None and v.startswith("sqlite:///") and not v.startswith("sqlite:////") \
            and v != "sqlite:///:memory:":
        return "sqlite:///" + str(base / v[len("sqlite:///"):])
    return v


def _decimal_text(v: Any) -> Any:
    if isinstance(v, bool) or not isinstance(v, str | int | float | Decimal):
        return v  # refused by the str type
    try:
        d = Decimal(str(v))
    except InvalidOperation as exc:
        raise ValueError(f"{v!r} is not a decimal number") from exc
    if not d.is_finite():
        raise ValueError(f"{v!r} is not a finite decimal number")
    return str(v)


def _listen(v: str) -> str:
    host, sep, port = v.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{v!r} is not host:port")
    return v


RelPath = Annotated[Path, BeforeValidator(_rel_path)]
"""A path; relative ones are relative to the config file's folder."""
DbUrl = Annotated[str, BeforeValidator(_db_url)]
"""A SQLAlchemy URL; a relative SQLite path is relative to the config file's folder."""
DecimalText = Annotated[str, BeforeValidator(_decimal_text)]
"""A decimal number, written as a TOML string or number, kept as its text."""
DecimalValue = Annotated[Decimal, BeforeValidator(lambda v: v if isinstance(v, Decimal) else Decimal(_decimal_text(v)))]
"""A decimal number, written as a TOML string or number, as a Decimal."""
ListenAddr = Annotated[str, AfterValidator(_listen)]
"""A ``host:port`` to listen on."""


@dataclass(config=STRICT, frozen=True)
class PrivacySection:
    """The privacy nodes of a network, as every config that needs them spells them
    (``[gateway.privacy]``, ``[partner.privacy]``, a network file's ``[privacy]``)."""

    protocol: Literal["semi2k", "aby3"]
    nodes: list[str]
    dealer: str = ""

    def __post_init__(self) -> None:
        want = 2 if self.protocol == "semi2k" else 3
        if len(self.nodes) != want or len(set(self.nodes)) != want or (self.protocol == "semi2k") != bool(self.dealer) \
                or self.dealer in self.nodes:
            raise ValueError(f"{self.protocol} needs {want} distinct share holders"
                             + (" and a dealer besides them" if want == 2 else " and no dealer"))


def load_doc(path: str | Path) -> tuple[dict[str, Any], str]:
    """The parsed TOML of ``path`` and its text; ConfigError naming the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}") from exc
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not TOML: {exc}") from exc


def _line_of(text: str, keys: tuple[str, ...]) -> int | None:
    """The line where the key path ``keys`` (table names, then the key) is written:
    the key inside the deepest table header the path names, or that header."""
    header = re.compile(r"^\s*\[+\s*([^\]]+?)\s*\]+\s*(#.*)?$")
    assign = re.compile(r"^\s*([A-Za-z0-9_\-\"'.]+)\s*=")
    current: tuple[str, ...] = ()
    best: int | None = None
    for no, line in enumerate(text.splitlines(), start=1):
        m = header.match(line)
        if m:
            current = tuple(p.strip().strip("\"'") for p in m.group(1).split("."))
            if current == keys[:len(current)] and best is None and len(current) == len(keys):
                best = no
            continue
        m = assign.match(line)
        if m:
            name = tuple(p.strip().strip("\"'") for p in m.group(1).split("."))
            if current + name == keys[:len(current) + len(name)] and current == keys[:len(current)]:
                return no
    if best is None and len(keys) > 1:
        return _line_of(text, keys[:-1])
    return best


def parse_table(cls: type[T], raw: Any, where: str, text: str = "", table: tuple[str, ...] = (),
                base: Path | None = None) -> T:
    """``raw`` (a TOML table) as ``cls``; ConfigError "where:line: [table] key: problem"."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: no [{'.'.join(table)}] table" if table else f"{where}: not a table")
    try:
        # as JSON: strict types still take a table for a section, a string for a path
        # or a decimal, an integer for a float; but never "five" for a number
        return TypeAdapter(cls).validate_json(json.dumps(raw), context={"base": base})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(str(p) for p in err["loc"])
        line = _line_of(text, table + loc) if text else None
        name = ".".join(loc) or "(table)"
        if err["type"] == "missing":
            problem = "is required"
        elif err["type"] == "unexpected_keyword_argument" or err["type"] == "extra_forbidden":
            problem = "is not a known key"
        else:
            problem = f"{err['msg']} (got {err.get('input')!r})"[:300]
        at = f"{where}:{line}" if line else where
        more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        section = f"[{'.'.join(table)}] " if table else ""
        raise ConfigError(f"{at}: {section}{name} {problem}{more}") from None


def load_table(path: str | Path, table: str, cls: type[T], defaults: dict[str, Any] | None = None) -> T:
    """The ``[table]`` of the TOML file ``path`` as ``cls`` (a pydantic dataclass),
    paths resolved against the file's folder; ``defaults`` fill keys the file leaves
    out and are resolved the same way (a default path relative to the file)."""
    path = Path(path)
    doc, text = load_doc(path)
    raw = doc.get(table)
    if isinstance(raw, dict) and defaults:
        raw = {**defaults, **raw}
    return parse_table(cls, raw, str(path), text, (table,), path.parent)
