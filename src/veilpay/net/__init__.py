"""Channels between parties: typed messages, in-process socket pairs or TCP + mutual TLS 1.3,
with per-operation counts of rounds and bytes."""

from veilpay.net.channel import Channel, LinkStats
from veilpay.net.communicator import Communicator, OpStats
from veilpay.net.config import NetworkConfig, PartyEntry, load_network, provision_network
from veilpay.net.local import local_mesh
from veilpay.net.tcp import connect_mesh

__all__ = [
    "Channel",
    "Communicator",
    "LinkStats",
    "NetworkConfig",
    "OpStats",
    "PartyEntry",
    "connect_mesh",
    "load_network",
    "local_mesh",
    "provision_network",
]
