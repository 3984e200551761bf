"""The only package that imports cryptographic libraries: PRG, seed agreement,
certificates and TLS contexts. Everything above uses these wrappers."""

from veilpay.crypto.certs import Identity, issue_party_certificate, make_ca, write_identity
from veilpay.crypto.digest import sha256, sha256_file
from veilpay.crypto.keyagree import SeedAgreement
from veilpay.crypto.p256_oprf import OprfKey, check_p256_points, hash_to_p256
from veilpay.crypto.points import InvalidPointError
from veilpay.crypto.pool import BlindingPool
from veilpay.crypto.prg import Prg, derive_seed, label_digest, random_seed
from veilpay.crypto.tls import client_context, peer_common_name, peer_party, server_context
from veilpay.crypto.x25519_blind import BlindingKey, check_points, hash_to_points

__all__ = [
    "BlindingKey",
    "BlindingPool",
    "InvalidPointError",
    "OprfKey",
    "check_p256_points",
    "check_points",
    "hash_to_p256",
    "hash_to_points",
    "Identity",
    "Prg",
    "SeedAgreement",
    "client_context",
    "derive_seed",
    "issue_party_certificate",
    "label_digest",
    "make_ca",
    "peer_common_name",
    "peer_party",
    "random_seed",
    "server_context",
    "sha256",
    "sha256_file",
    "write_identity",
]
