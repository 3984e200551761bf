"""veilpay: privacy-preserving payment network software.

Layers, bottom up (a module imports only from layers below it):
crypto -> net -> mpc -> ... -> cli. See docs/design.md.
"""

__version__ = "0.1.0"
