"""The ``veilpay`` command."""
