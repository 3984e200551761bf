"""The terms both parties of a PSI run on files must share, agreed in the run's first
message, before any id is hashed or sent:

    R <-> S  terms: version, role, protocol, mode, reveal, key columns, normalisation
             (seven uint64 fields; each side sends its own and reads the peer's)

Each side checks the peer's terms against its own with the same rule, so a difference
is `ProtocolMismatch` at both ends, naming every field that differs. Without this step,
parties that key or normalise their ids differently ran to completion and found
nothing in common. Key column names are not compared: each side's file may call them
differently; their count and normalisation decide whether equal keys give equal ids.
The terms say how ids are made, never what they are: each side learns the other's
key-column count and normalisation, and nothing of its rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from veilpay.errors import InvalidInput, ProtocolMismatch, WireFormatError
from veilpay.net import Communicator

__all__ = ["TERMS_VERSION", "Terms", "agree"]

TERMS_VERSION = 1
LABEL = "psi.terms"
# wire codes; 0 is never used, so an all-zero message is refused
_CODES: dict[str, dict[str, int]] = {
    "role": {"receiver": 1, "sender": 2},
    "protocol": {"kkrt": 1, "ecdh": 2, "oprf-p256": 3, "rr22": 4},
    "mode": {"intersection": 1, "cardinality": 2, "unbalanced": 3},
    "reveal": {"receiver": 1, "both": 2},
    "normalise": {"none": 1, "trim": 2, "casefold": 3},
}
_FIELDS = ("role", "protocol", "mode", "reveal", "key_columns", "normalise")
_MAX_KEY_COLUMNS = 1 << 16


@dataclass(frozen=True)
class Terms:
    """One party's side of a run: its role, and what both must share."""

    role: str
    protocol: str
    mode: str
    reveal: str
    key_columns: int
    normalise: str

    def __post_init__(self) -> None:
        for name, codes in _CODES.items():
            if getattr(self, name) not in codes:
                raise InvalidInput(f"{name} must be one of {sorted(codes)}, not {getattr(self, name)!r}")
        if not 1 <= self.key_columns <= _MAX_KEY_COLUMNS:
            raise InvalidInput(f"name between 1 and {_MAX_KEY_COLUMNS} key columns, not {self.key_columns}")

    def to_array(self) -> np.ndarray:
        values = [self.key_columns if f == "key_columns" else _CODES[f][getattr(self, f)] for f in _FIELDS]
        return np.array([TERMS_VERSION, *values], dtype=np.uint64)

    @classmethod
    def from_array(cls, peer: str, got: np.ndarray) -> Terms:
        """The peer's terms, or ProtocolMismatch for another version or an unknown code."""
        if got.dtype != np.uint64 or got.ndim != 1 or not got.size:
            raise ProtocolMismatch(peer, f"PSI terms of the wrong type: {got.dtype} {got.shape}")
        if int(got[0]) != TERMS_VERSION:
            raise ProtocolMismatch(peer, f"peer speaks PSI terms version {int(got[0])}, we speak {TERMS_VERSION}")
        if got.shape != (1 + len(_FIELDS),):
            raise ProtocolMismatch(peer, f"PSI terms of the wrong shape {got.shape}")
        role, protocol, mode, reveal, key_columns, normalise = (int(v) for v in got[1:])
        if not 1 <= key_columns <= _MAX_KEY_COLUMNS:
            raise ProtocolMismatch(peer, f"key column count {key_columns} out of range")
        return cls(_name(peer, "role", role), _name(peer, "protocol", protocol), _name(peer, "mode", mode),
                   _name(peer, "reveal", reveal), key_columns, _name(peer, "normalise", normalise))


def _name(peer: str, field: str, code: int) -> str:
    names = [k for k, v in _CODES[field].items() if v == code]
    if not names:
        raise ProtocolMismatch(peer, f"unknown {field} code {code} in the peer's PSI terms")
    return names[0]


def _differences(mine: Terms, theirs: Terms) -> list[str]:
    out = [f"both parties are the {mine.role}"] if mine.role == theirs.role else []
    for name in _FIELDS[1:]:
        ours, peers = getattr(mine, name), getattr(theirs, name)
        if ours != peers:
            what = "key columns" if name == "key_columns" else f"--{name}"
            out.append(f"{what} {ours} here, {peers} there")
    return out


def agree(comm: Communicator, peer: str, mine: Terms) -> Terms:
    """Send this party's terms and check the peer's: its terms, or ProtocolMismatch
    (raised at both ends, as the peer runs the same check) naming what differs. A peer
    whose first message is something else (an older veilpay that sends no terms) is a
    ProtocolMismatch too."""
    try:
        got = comm.exchange(LABEL, {peer: [mine.to_array()]}, {peer: 1})[peer][0]
    except ProtocolMismatch:
        raise
    except WireFormatError as exc:
        detail = str(exc).split(": ", 1)[-1]
        raise ProtocolMismatch(peer, f"no PSI terms from the peer (an older veilpay?): {detail}") from exc
    theirs = Terms.from_array(peer, got)
    diff = _differences(mine, theirs)
    if diff:
        raise ProtocolMismatch(peer, "the parties' PSI terms differ: " + "; ".join(diff))
    return theirs
