"""Every exception veilpay raises on purpose.

The tree::

    VeilpayError
    ├── InvalidInput (also ValueError)      bad arguments from the caller
    │   ├── ShapeMismatch                   operand shapes that do not combine
    │   ├── FixedPointOverflow              a value outside the fixed-point range
    │   └── DataError                       an input file that cannot be used (names file, column)
    ├── ConfigError                         a network file, key or certificate that is unusable
    ├── DatabaseUnavailable                 a service's database cannot be reached or opened
    ├── OkvsFailure                         an OKVS encoding found no solution (retry under a new key)
    ├── ProtocolError                       a multi-party run that went wrong
    │   ├── PeerError                       ... because of one named peer (``.peer``)
    │   │   ├── PeerDisconnected            the peer closed the connection or died
    │   │   ├── ProtocolTimeout             nothing arrived from the peer in time
    │   │   ├── WireFormatError             bytes that are not a valid veilpay message
    │   │   │   ├── InvalidPoint            a curve point that must not be used (PSI)
    │   │   │   └── ProtocolMismatch        the peer runs another version or mode
    │   │   │       └── PartitionMismatch   partitioned PSI: another partition count or partition key
    │   │   ├── PeerAuthenticationError     TLS refused: no or wrong certificate
    │   │   ├── PartitionFailed             partitioned PSI: a partition failed at both after its retries
    │   │   ├── QueryRefused                an unbalanced-PSI server refused the query (budget, key age)
    │   │   └── NodesDisagree               privacy nodes hold different views of the same job
    │   │       └── LedgerMismatch          ... of the disclosure ledger: heads or entries differ
    │   └── PartyFailed                     a party of an in-process run raised (``.party``)
    ├── NodeError                           a privacy node refused a feed or job (``.code``)
    ├── LedgerError                         a copy of a disclosure ledger that does not verify
    ├── DecryptionError                     a sealed field that does not open for this key and context
    └── GatewayError                        an API exchange refused or failed (``.code``: the result code)
        ├── SignatureError                  a missing, malformed or wrong signature on a message
        │   ├── KeyNotCertified             a key entry that does not chain to the pinned key authority
        │   └── LogInconsistent             a key-log head unsigned by the authority, or not consistent with one seen
        ├── MalformedBody                   a signed message whose body is not a JSON object (``.signed``)
        ├── GatewayUnavailable              no answer from the gateway after the allowed retries
        └── RequestRejected                 the gateway answered with a result code (``.result``)

Foreign exceptions (``ssl.SSLError``, ``OSError``, ``tomllib.TOMLDecodeError``) are
translated at the boundary with ``raise ... from exc``.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DatabaseUnavailable",
    "DataError",
    "DecryptionError",
    "NodeError",
    "NodesDisagree",
    "GatewayError",
    "LedgerError",
    "LedgerMismatch",
    "GatewayUnavailable",
    "RequestRejected",
    "SignatureError",
    "FixedPointOverflow",
    "InvalidInput",
    "InvalidPoint",
    "KeyNotCertified",
    "LogInconsistent",
    "MalformedBody",
    "OkvsFailure",
    "PartitionFailed",
    "PartitionMismatch",
    "PartyFailed",
    "PeerAuthenticationError",
    "ProtocolMismatch",
    "PeerDisconnected",
    "PeerError",
    "ProtocolError",
    "ProtocolTimeout",
    "QueryRefused",
    "ShapeMismatch",
    "VeilpayError",
    "WireFormatError",
]


class VeilpayError(Exception):
    """Base class of every veilpay error."""


class InvalidInput(VeilpayError, ValueError):
    """An argument that the caller must fix."""


class ShapeMismatch(InvalidInput):
    """Operand shapes that cannot be combined."""


class FixedPointOverflow(InvalidInput):
    """A value that the fixed-point encoding cannot represent."""


class DataError(InvalidInput):
    """An input file that cannot be read as asked: malformed, or a column missing."""


class ConfigError(VeilpayError):
    """A network file, key or certificate that cannot be used."""


class DatabaseUnavailable(VeilpayError):
    """A service's database that cannot be reached or opened (the server down, a
    wrong host, port or database name, refused credentials)."""


class OkvsFailure(VeilpayError):
    """An oblivious key-value store found no table for its items under this key (the
    equations left after peeling are dependent and inconsistent: duplicate items with
    different values, or a rare event below 2^-40 for distinct ones). The caller draws
    a new key and encodes again."""


class ProtocolError(VeilpayError):
    """A multi-party protocol run failed."""


class PeerError(ProtocolError):
    """A failure attributed to one peer; ``peer`` names it."""

    def __init__(self, peer: str, message: str) -> None:
        super().__init__(f"peer {peer!r}: {message}")
        self.peer = peer


class PeerDisconnected(PeerError):
    """The peer closed the connection or its process died."""


class ProtocolTimeout(PeerError):
    """Nothing arrived from the peer within the timeout."""


class WireFormatError(PeerError):
    """The peer sent bytes that are not a well-formed message for this step."""


class InvalidPoint(WireFormatError):
    """The peer sent a non-canonical or small-order curve point."""


class ProtocolMismatch(WireFormatError):
    """The peer runs another protocol version, mode or role."""


class PartitionMismatch(ProtocolMismatch):
    """Partitioned PSI: the parties bucket their ids differently (another partition
    count, or another partition key: one resumes a run the other does not), so equal
    ids would meet in different partitions. Nothing is run."""


class PartitionFailed(PeerError):
    """Partitioned PSI: partition ``partition`` failed after its retries (``cause``
    names why: the peer's worker, a timeout, a crash here). No output is written."""

    def __init__(self, peer: str, partition: int, cause: str) -> None:
        super().__init__(peer, f"partition {partition} failed: {cause}")
        self.partition = partition
        self.cause = cause


class PeerAuthenticationError(PeerError):
    """The TLS handshake failed: missing, untrusted or mismatched certificate."""


class PartyFailed(ProtocolError):
    """A party of an in-process run raised; ``party`` names it, ``__cause__`` is the error."""

    def __init__(self, party: str, exc: BaseException) -> None:
        super().__init__(f"party {party!r} failed: {type(exc).__name__}: {exc}")
        self.party = party
        self.error = exc


class QueryRefused(PeerError):
    """An unbalanced-PSI server refused a client's query: its query budget under the
    server's current key is spent, or the key is older than the server lets it serve."""


class NodesDisagree(PeerError):
    """Privacy nodes whose inputs to one job differ (other items, groups or counts): the
    gateway relayed different data to them, or one has not caught up. No result is revealed."""


class LedgerMismatch(NodesDisagree):
    """Privacy nodes whose disclosure ledgers differ before a reveal (a node skipped or
    changed an entry, or was fed another history): nothing is revealed."""


class LedgerError(VeilpayError):
    """A disclosure ledger copy that does not verify: a broken hash chain, a gap, a
    signature that is not the node's, or two copies that fork (``.seq``: where)."""

    def __init__(self, message: str, seq: int = 0) -> None:
        super().__init__(message)
        self.seq = seq


class NodeError(VeilpayError):
    """A privacy node refused a feed batch or a job; ``code`` says why (``NODE_BEHIND``,
    ``NODE_BUSY``, ``JOB_INVALID``, ``NODES_DISAGREE``, ``JOB_FAILED``, ``INVALID_SIGNATURE``)."""

    def __init__(self, message: str, code: str = "JOB_FAILED", http_status: int = 409) -> None:
        super().__init__(message)
        self.code = code
        self.http_status = http_status


class DecryptionError(VeilpayError):
    """A sealed (HPKE) field that does not open: wrong recipient, key version or context, or tampered."""


class GatewayError(VeilpayError):
    """An exchange with the gateway (or, for the gateway, with a partner) that failed; ``code`` is the
    Alipay+-style result code that describes it."""

    code = "UNKNOWN_EXCEPTION"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class SignatureError(GatewayError):
    """A message whose signature is missing, malformed, from an unknown or retired key, or wrong."""

    code = "INVALID_SIGNATURE"


class KeyNotCertified(SignatureError):
    """A key entry (a partner's or a node's) that is not self-signed by its owner or not
    in a log head the pinned key authority signed: whoever serves it, it is not used."""

    code = "KEY_NOT_CERTIFIED"
    loggable = True  # its messages name parties, key versions and log sizes only


class LogInconsistent(SignatureError):
    """A head of the key transparency log that the key authority did not sign, or that
    is not consistent with a head already seen (a rewritten history, a rollback, or a
    split view shown to different parties)."""

    code = "LOG_INCONSISTENT"
    loggable = True


class MalformedBody(GatewayError):
    """A message whose signature verifies but whose body is not JSON, or not a JSON
    object. ``signed`` holds its verified headers (``veilpay.sdk.signing.SignedHeaders``),
    so that a service can still bind its answer to the request, or guard its nonce."""

    code = "MALFORMED_REQUEST"

    def __init__(self, message: str, signed: object = None) -> None:
        super().__init__(message)
        self.signed = signed


class GatewayUnavailable(GatewayError):
    """No (verifiable) answer within the timeout after the allowed retries; the outcome is unknown."""

    code = "UNKNOWN_EXCEPTION"


class RequestRejected(GatewayError):
    """The peer answered with a failure result; ``result`` holds its result object."""

    def __init__(self, result: dict[str, str]) -> None:
        super().__init__(f"{result.get('resultCode')}: {result.get('resultMessage', '')}", result.get("resultCode"))
        self.result = result
