"""Private set intersection: ECDH-PSI on X25519 and its data plumbing."""

from veilpay.psi.data import IdTable, read_ids, write_rows
from veilpay.psi.ecdh import MODES, PSI_VERSION, PsiResult, ecdh_psi
from veilpay.psi.run import run_psi_files

__all__ = ["MODES", "PSI_VERSION", "IdTable", "PsiResult", "ecdh_psi", "read_ids", "run_psi_files", "write_rows"]
