"""A throwaway Weaviate cluster on one host: N real ``weaviate-server`` nodes on loopback ports.

Weaviate's own clustering does the work (memberlist gossip, Raft for the schema, replication
of the data); this only sets the variables its docs and its dev script (``tools/dev/
run_dev_server.sh``, the ``local-*`` nodes) use for several nodes on one host:
``CLUSTER_IN_LOCALHOST`` (peers are found at their gossip and Raft ports + 1),
``CLUSTER_JOIN`` (the first node's gossip address), ``RAFT_JOIN`` (every voter as
``name:raft_port``) and ``RAFT_BOOTSTRAP_EXPECT``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Self

from qvl_devtools.launchers.ports import START_ATTEMPTS, PortTaken
from qvl_devtools.launchers.weaviate import WeaviateServer


class WeaviateCluster:
    """``size`` nodes named node1..nodeN, every one a Raft voter; `env` goes to every node (module
    variables: each node calls the modules itself); ``repairable`` as for ``WeaviateServer``.

    The nodes name each other's ports, so a node that cannot bind one on the first start takes the
    whole cluster to fresh ports (and fresh data directories)."""

    def __init__(self, size: int = 3, *, env: Mapping[str, str] | None = None,
                 startup_timeout: float = 180.0, repairable: bool = False) -> None:
        if size < 1:
            raise ValueError("a cluster has at least one node")
        self.env = dict(env or {})
        self.nodes = [WeaviateServer(env=env, node_name=f"node{i + 1}", startup_timeout=startup_timeout,
                                    repairable=repairable)
                      for i in range(size)]
        self._settled = False  # every node was ready once: the ports are the cluster's from then on
        self._wire()

    def _wire(self) -> None:
        """Each node's cluster variables, from every node's current ports."""
        raft_join = ",".join(f"{n.node_name}:{n.raft_port}" for n in self.nodes)
        seed = self.nodes[0]
        for node in self.nodes:
            node.extra_env = {
                "CLUSTER_IN_LOCALHOST": "true",
                "RAFT_JOIN": raft_join,
                "RAFT_BOOTSTRAP_EXPECT": str(len(self.nodes)),
                # A killed node is declared dead and its name free again within seconds, so it
                # can rejoin under the same name when it comes back.
                "MEMBERLIST_FAST_FAILURE_DETECTION": "true",
                **({"CLUSTER_JOIN": f"{seed.host}:{seed.gossip_port}"} if node is not seed else {}),
                **self.env,
            }

    def start(self) -> Self:
        # Raft elects a leader only once RAFT_BOOTSTRAP_EXPECT voters are up: launch all, then wait.
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                for node in self.nodes:
                    node.launch()
                for node in self.nodes:
                    node.wait_ready()
                self._settled = True
                return self
            except PortTaken:
                self.stop()
                if attempt == START_ATTEMPTS or self._settled:
                    raise
                for node in self.nodes:
                    node.pick_ports()
                self._wire()
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
