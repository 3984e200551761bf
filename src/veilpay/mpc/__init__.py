"""Secret-shared computation in Z_2^64: semi2k (2PC + dealer) and aby3 (3PC replicated),
a numpy-like SharedTensor, fixed-point arithmetic and non-linear functions."""

from veilpay.mpc import nonlinear
from veilpay.mpc.aby3 import Aby3
from veilpay.mpc.fixedpoint import FixedPoint
from veilpay.mpc.protocol import Protocol
from veilpay.mpc.ring import ring_matmul
from veilpay.mpc.runtime import PROTOCOLS, load_program, make_protocol, run_local, run_party
from veilpay.mpc.semi2k import Semi2k
from veilpay.mpc.tensor import BitMatrix, PremaskedMatrix, SharedTensor, concatenate, mul_columns, share, stack

__all__ = [
    "PROTOCOLS",
    "Aby3",
    "BitMatrix",
    "FixedPoint",
    "PremaskedMatrix",
    "Protocol",
    "Semi2k",
    "SharedTensor",
    "concatenate",
    "load_program",
    "make_protocol",
    "mul_columns",
    "nonlinear",
    "ring_matmul",
    "run_local",
    "run_party",
    "share",
    "stack",
]
