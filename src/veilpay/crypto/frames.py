"""AES-256-GCM frames for one direction of a party-to-party link.

A link is authenticated by its TLS 1.3 handshake (both certificates from the network
CA). Inside that TLS session the sending end draws a fresh 32-byte secret and sends
it with its hello; both ends derive this direction's key from it with HKDF-SHA256,
bound to the session id and the two party ids. Bulk data then travels as AEAD frames
instead of TLS records, because Python's TLS record layer (16 KiB records, memory
copies, one call per record) costs twice the CPU per MiB of these frames.

Each frame is sealed under a 96-bit nonce that is the frame's position in the stream
(0, 1, 2, ...), never sent; the frame's length prefix is the additional data. A
frame that is altered, dropped, replayed, reordered or cut off therefore fails to
open. The key is used for at most 2^32 frames.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from veilpay.errors import InvalidInput

__all__ = ["FRAME_TAG", "FrameCipher", "FrameOpenError", "frame_key"]

FRAME_TAG = 16
_MAX_FRAMES = 1 << 32


class FrameOpenError(ValueError):
    """A frame failed authentication (tampered, replayed, reordered or wrong key)."""


def frame_key(secret: bytes, session: bytes, sender: str, receiver: str) -> bytes:
    """The AES-256-GCM key of the link from ``sender`` to ``receiver``."""
    if len(secret) != 32:
        raise InvalidInput("a link secret is 32 bytes")
    info = b"veilpay/frames/v1/" + sender.encode() + b"->" + receiver.encode()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=session, info=info).derive(secret)


class FrameCipher:
    """Seals (or opens) the frames of one direction in order; one thread only."""

    __slots__ = ("_count", "_key")

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise InvalidInput("a frame key is 32 bytes")
        self._key = algorithms.AES(key)
        self._count = 0

    def __repr__(self) -> str:
        return f"FrameCipher(frames={self._count})"

    def _nonce(self) -> bytes:
        if self._count >= _MAX_FRAMES:
            raise InvalidInput("this link has used its key for 2^32 frames")
        nonce = self._count.to_bytes(12, "big")
        self._count += 1
        return nonce

    def seal_into(self, aad: bytes, data: memoryview, out: memoryview) -> bytes:
        """Encrypt ``data`` into ``out`` (same length; may be the same buffer) and
        return the 16-byte tag."""
        enc = Cipher(self._key, modes.GCM(self._nonce())).encryptor()
        enc.authenticate_additional_data(aad)
        enc.update_into(data, out)
        enc.finalize()
        return enc.tag

    def open_into(self, aad: bytes, data: memoryview, tag: bytes, out: memoryview) -> None:
        """Decrypt ``data`` into ``out`` (may be the same buffer); FrameOpenError if the
        frame is not the next one sealed under this key. ``out`` holds garbage then."""
        dec = Cipher(self._key, modes.GCM(self._nonce())).decryptor()
        dec.authenticate_additional_data(aad)
        dec.update_into(data, out)
        try:
            dec.finalize_with_tag(tag)
        except InvalidTag as exc:
            raise FrameOpenError("frame failed authentication") from exc
