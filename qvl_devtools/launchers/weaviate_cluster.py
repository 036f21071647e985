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

from qvl_devtools.launchers.weaviate import WeaviateServer


class WeaviateCluster:
    """``size`` nodes named node1..nodeN, every one a Raft voter; `env` goes to every node (module
    variables: each node calls the modules itself); ``repairable`` as for ``WeaviateServer``."""

    def __init__(self, size: int = 3, *, env: Mapping[str, str] | None = None,
                 startup_timeout: float = 180.0, repairable: bool = False) -> None:
        if size < 1:
            raise ValueError("a cluster has at least one node")
        self.nodes = [WeaviateServer(env=env, node_name=f"node{i + 1}", startup_timeout=startup_timeout,
                                    repairable=repairable)
                      for i in range(size)]
        raft_join = ",".join(f"{n.node_name}:{n.raft_port}" for n in self.nodes)
        seed = self.nodes[0]
        for node in self.nodes:
            node.extra_env = {
                "CLUSTER_IN_LOCALHOST": "true",
                "RAFT_JOIN": raft_join,
                "RAFT_BOOTSTRAP_EXPECT": str(size),
                # A killed node is declared dead and its name free again within seconds, so it
                # can rejoin under the same name when it comes back.
                "MEMBERLIST_FAST_FAILURE_DETECTION": "true",
                **({"CLUSTER_JOIN": f"{seed.host}:{seed.gossip_port}"} if node is not seed else {}),
                **node.extra_env,
            }

    def start(self) -> Self:
        # Raft elects a leader only once RAFT_BOOTSTRAP_EXPECT voters are up: launch all, then wait.
        try:
            for node in self.nodes:
                node.launch()
            for node in self.nodes:
                node.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
