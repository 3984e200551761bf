"""One party's view of the network: a channel per peer, lock-step rounds, statistics.

Protocols are SPMD: every party runs the same sequence of `exchange` calls, each
of which is one communication round (all its sends leave before any of its receives
is awaited). Rounds and bytes are counted per statistics label: the outermost
`scope` if one is open, else the exchange's own label.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from veilpay.errors import InvalidInput
from veilpay.net.channel import Channel

__all__ = ["MAX_QUEUED", "Communicator", "OpStats"]

# The bytes of earlier rounds a party may still have queued to one peer when it starts
# a round: bounds the memory of a party that only sends (semi2k's dealer ran 60 trees
# ahead, 18 GB, before this bound) while leaving it a few rounds of lead.
MAX_QUEUED = 256 << 20


@dataclass
class OpStats:
    rounds: int = 0
    messages_sent: int = 0
    bytes_sent: int = 0
    bytes_recv: int = 0


class Communicator:
    def __init__(self, me: str, parties: Sequence[str], channels: Mapping[str, Channel]) -> None:
        if me not in parties or len(set(parties)) != len(parties):
            raise InvalidInput("party list must be unique and contain this party")
        missing = set(parties) - {me} - set(channels)
        if missing:
            raise InvalidInput(f"no channel to {sorted(missing)}")
        self.me = me
        self.parties = tuple(parties)
        self.channels = dict(channels)
        self._rounds: Counter[str] = Counter()
        self._scopes: list[str] = []

    def __repr__(self) -> str:
        return f"Communicator(me={self.me!r}, parties={self.parties!r})"

    @property
    def peers(self) -> tuple[str, ...]:
        return tuple(p for p in self.parties if p != self.me)

    @contextlib.contextmanager
    def scope(self, name: str) -> Iterator[None]:
        """Attribute the rounds and bytes of everything inside to ``name``."""
        self._scopes.append(name)
        try:
            yield
        finally:
            self._scopes.pop()

    def _stat(self, label: str) -> str:
        return self._scopes[0] if self._scopes else label

    def exchange(
        self,
        label: str,
        send: Mapping[str, Sequence[np.ndarray]] | None = None,
        recv: Mapping[str, int] | None = None,
    ) -> dict[str, list[np.ndarray]]:
        """One round: send each listed peer its arrays, then receive ``recv[peer]`` arrays
        from each listed peer. Every party calls this, even with nothing to do."""
        stat = self._stat(label)
        self._rounds[stat] += 1
        for peer, arrays in (send or {}).items():
            ch = self.channels[peer]
            ch.drain_below(MAX_QUEUED)  # earlier rounds' messages only: this round's always go out
            for arr in arrays:
                ch.send(label, arr, stat)
        out: dict[str, list[np.ndarray]] = {}
        for peer, count in (recv or {}).items():
            ch = self.channels[peer]
            out[peer] = [ch.recv(label, stat) for _ in range(count)]
        return out

    def collect(self, label: str, recv: Mapping[str, int]) -> dict[str, list[np.ndarray]]:
        """Receive, late, messages of the round just counted under ``label``: a party may
        do local work before reading a message that was sent in the same round."""
        stat = self._stat(label)
        return {peer: [self.channels[peer].recv(label, stat) for _ in range(count)] for peer, count in recv.items()}

    def stats(self) -> dict[str, OpStats]:
        result: dict[str, OpStats] = {}
        for label, rounds in self._rounds.items():
            result[label] = OpStats(rounds=rounds)
        for ch in self.channels.values():
            for label, link in ch.stats.items():
                s = result.setdefault(label, OpStats())
                s.messages_sent += link.messages_sent
                s.bytes_sent += link.bytes_sent
                s.bytes_recv += link.bytes_recv
        return result

    def total(self) -> OpStats:
        total = OpStats()
        for s in self.stats().values():
            total.rounds += s.rounds
            total.messages_sent += s.messages_sent
            total.bytes_sent += s.bytes_sent
            total.bytes_recv += s.bytes_recv
        return total

    def reset_stats(self) -> None:
        self._rounds.clear()
        for ch in self.channels.values():
            ch.stats.clear()

    def peer_hung_up(self, peer: str) -> bool:
        """True when ``peer`` has closed its link and left nothing unread (see
        `Channel.peer_hung_up`)."""
        return self.channels[peer].peer_hung_up()

    def flush(self) -> None:
        for ch in self.channels.values():
            ch.flush()

    def close(self) -> None:
        for ch in self.channels.values():
            ch.close()
