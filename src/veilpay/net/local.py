"""In-process transport: every party in its own thread, one socket pair per direction.

The bytes go through the same framing code as TCP+TLS, so tests exercise the wire
format; only the TLS layer is absent.
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Sequence

from veilpay.net.channel import Channel
from veilpay.net.communicator import Communicator

__all__ = ["local_mesh"]


def local_mesh(
    parties: Sequence[str], session: bytes | None = None, timeout: float = 60.0
) -> dict[str, Communicator]:
    session = session or secrets.token_bytes(16)
    pipes: dict[tuple[str, str], tuple[socket.socket, socket.socket]] = {}
    for a in parties:
        for b in parties:
            if a != b:
                pipes[(a, b)] = socket.socketpair()
    comms: dict[str, Communicator] = {}
    for me in parties:
        channels = {
            peer: Channel(me, peer, pipes[(me, peer)][0], pipes[(peer, me)][1], session, timeout)
            for peer in parties
            if peer != me
        }
        comms[me] = Communicator(me, parties, channels)
    return comms
