"""Private set intersection: RR22 (silent VOLE + OKVS, the default), KKRT (OT
extension), ECDH-PSI on X25519,
unbalanced PSI (an OPRF on P-256) against a set prepared offline, and their data
plumbing: input checked before any connection, the run's terms agreed with the peer;
partitioned over each party's own Ray cluster (`run_partitioned`, Ray optional)."""

from veilpay.psi.data import IdTable, read_ids, write_rows
from veilpay.psi.ecdh import MODES, PSI_VERSION, PsiResult, ecdh_psi
from veilpay.psi.kkrt import KKRT_VERSION, kkrt_psi
from veilpay.psi.partitioned import ray_init, run_partitioned
from veilpay.psi.rr22 import RR22_VERSION, rr22_psi
from veilpay.psi.run import PROTOCOLS, check_psi_files, choose_protocol, run_psi_files, setup_psi_file
from veilpay.psi.terms import TERMS_VERSION, Terms
from veilpay.psi.unbalanced import load_server_set, setup_server, unbalanced_psi

__all__ = [
    "KKRT_VERSION",
    "MODES",
    "PROTOCOLS",
    "PSI_VERSION",
    "RR22_VERSION",
    "TERMS_VERSION",
    "IdTable",
    "PsiResult",
    "Terms",
    "check_psi_files",
    "choose_protocol",
    "ecdh_psi",
    "kkrt_psi",
    "load_server_set",
    "ray_init",
    "rr22_psi",
    "read_ids",
    "run_partitioned",
    "run_psi_files",
    "setup_psi_file",
    "setup_server",
    "unbalanced_psi",
    "write_rows",
]
