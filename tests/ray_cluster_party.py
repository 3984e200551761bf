"""One party of a partitioned PSI run (`veilpay psi --ray-address`) on its own
multi-node Ray cluster on this machine, for tests/test_psi_ray.py: a head and one more
node (`ray.cluster_utils.Cluster`), each with one CPU and its own loopback address, so
the party's two worker slots land on two node addresses.

    python tests/ray_cluster_party.py HEAD_IP NODE_IP -- psi ARGS...

The driver joins the cluster on the head node, then runs ``veilpay psi ARGS
--ray-address <the cluster>``; the cluster is shut down when the run ends.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    head_ip, node_ip, sep, *args = argv
    if sep != "--":
        raise SystemExit(__doc__)
    import ray
    from ray.cluster_utils import Cluster

    from veilpay.cli.main import main as cli

    small = {"num_cpus": 1, "object_store_memory": 80 << 20}
    cluster = Cluster(initialize_head=True, head_node_args={**small, "node_ip_address": head_ip,
                                                            "include_dashboard": False})
    try:
        cluster.add_node(**small, node_ip_address=node_ip)
        # Ray would take this machine's address for the driver and find no node there:
        # the driver runs on the head, as it would on a real cluster
        ray.init(address=cluster.address, _node_ip_address=head_ip, log_to_driver=False, configure_logging=False)
        return cli([*args, "--ray-address", cluster.address])  # joined already: the CLI keeps this connection
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
