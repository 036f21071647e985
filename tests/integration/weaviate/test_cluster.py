"""A Weaviate cluster on qvl replicas: three real weaviate-server nodes (replication factor 3),
two qvl services (with a token) behind a real HAProxy, 2,000 objects with images ingested through
the nodes in turn, into a collection on a local module (multi2vec-clip, the URL from Weaviate's
environment) and one routed per collection (multi2vec-voyageai and reranker-cohere by ``baseURL``,
the token as the API key), while one qvl replica and one Weaviate node are SIGKILLed; the node
comes back.

Then every object is on every replica (each node's shard count) and in every node's vector index
(after Weaviate's own repair of the killed node's index, which a SIGKILL during a write can leave
short of objects its store holds), with exactly qvl's vector (read through every node with
consistency ALL), and nearText + rerank through each node agree.
One line of figures is printed: objects lost (must be 0), objects retried (by the test, through
another node), vectors the repair put back, requests HAProxy retried on the other replica, the
longest stall between batches.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import requests
import weaviate
from weaviate.classes.config import ConsistencyLevel
from weaviate.classes.data import DataObject
from weaviate.classes.query import MetadataQuery, Rerank
from weaviate.util import generate_uuid5

from connectors.client import Client
from connectors.weaviate.collections import MODULE_VECTOR, api_key_headers, create_collection
from qvl_devtools.launchers.weaviate import WeaviateServer, connect, module_env
from qvl_devtools.launchers.weaviate_cluster import WeaviateCluster
from tests.media_factory import image_bytes
from tests.support.haproxy import HAProxy
from tests.support.service import ServiceProcess

pytestmark = [pytest.mark.weaviate, pytest.mark.service, pytest.mark.slow, pytest.mark.soak]

N_OBJECTS = 2000
BATCH = 50
COLLECTIONS = ("ClusterPics", "ClusterVoyage")  # local module, per-collection module
TOKEN = "cluster-token"
KILL_REPLICA_AT, KILL_NODE_AT, NODE_BACK_AT = 8, 14, 26  # batch numbers (40 batches in all)
WORDS = ("red", "green", "blue", "striped", "dotted", "bright", "dark", "tiny", "wide", "tall")


def _objects() -> list[dict[str, Any]]:
    objs = []
    for i in range(N_OBJECTS):
        caption = f"{WORDS[i % 10]} {WORDS[(i // 10) % 10]} picture number {i}"
        image = image_bytes(size=(24 + i % 17, 20 + i % 13), seed=i)
        objs.append({"key": f"pic-{i}", "caption": caption, "image": image})
    return objs


class Nodes:
    """A client per node, remade after the node was killed and came back."""

    def __init__(self, cluster: WeaviateCluster) -> None:
        self.cluster = cluster
        self.clients: dict[int, weaviate.WeaviateClient] = {}

    def client(self, i: int) -> weaviate.WeaviateClient:
        if i not in self.clients:
            self.clients[i] = connect(self.cluster.nodes[i], timeout_s=120, headers=api_key_headers(TOKEN))
        return self.clients[i]

    def drop(self, i: int) -> None:
        client = self.clients.pop(i, None)
        if client is not None:
            client.close()

    def close(self) -> None:
        for i in list(self.clients):
            self.drop(i)


@pytest.fixture
def stack() -> Iterator[tuple[list[ServiceProcess], HAProxy, WeaviateCluster]]:
    # The local module sends no token: its routes are opened, everything else stays behind it.
    env = {"QVL_TOKEN": TOKEN, "QVL_OPEN_MODULE_ROUTES": "true"}
    with (ServiceProcess(env=env) as a, ServiceProcess(env=env) as b, HAProxy([a.http_url, b.http_url]) as lb,
          WeaviateCluster(3, env=module_env(lb.url, client_timeout="120s"), repairable=True) as cluster):
        yield [a, b], lb, cluster


def _insert(nodes: Nodes, node: int, name: str, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Insert through one node; returns the objects that did not make it (to retry elsewhere)."""
    col = nodes.client(node).collections.get(name).with_consistency_level(ConsistencyLevel.QUORUM)
    try:
        result = col.data.insert_many([
            DataObject(properties={"caption": o["caption"], "image": base64.b64encode(o["image"]).decode()},
                       uuid=generate_uuid5(o["key"], name)) for o in batch])
    except Exception:  # the node is down or lost quorum: the whole batch goes to the next node
        nodes.drop(node)
        return batch
    return [batch[i] for i in result.errors]


def _shards(node: WeaviateServer, name: str) -> dict[str, list[dict[str, Any]]]:
    """Each node's shards of collection ``name``, as ``node`` reports the cluster (/v1/nodes)."""
    body = requests.get(f"{node.url}/v1/nodes", params={"output": "verbose", "collection": name},
                        timeout=30).json()
    return {n["name"]: [s for s in (n.get("shards") or []) if s["class"] == name] for n in body["nodes"]}


def _shard_counts(node: WeaviateServer, name: str) -> dict[str, int]:
    """Objects per node for collection ``name``, as each node's shards report them."""
    return {n: sum(s["objectCount"] for s in shards) for n, shards in _shards(node, name).items()}


def _wait_indexed(cluster: WeaviateCluster, name: str, timeout: float = 120) -> None:
    """Until every node's indexing queues for ``name`` are empty (async indexing is on)."""
    deadline = time.monotonic() + timeout
    while queued := sum(s.get("vectorQueueLength", 0) for shards in _shards(cluster.nodes[0], name).values()
                        for s in shards):
        assert time.monotonic() < deadline, f"{name}: {queued} vectors still queued for indexing"
        time.sleep(1)


def _indexed(client: weaviate.WeaviateClient, name: str, probe: np.ndarray) -> set[str]:
    """The objects of ``name`` in the vector indexes this node searches (its own replicas): a flat
    index answers a search with a limit above the object count with every object it holds."""
    found = client.collections.get(name).query.near_vector(probe.tolist(), limit=N_OBJECTS + 100,
                                                           return_properties=[])
    return {str(o.uuid) for o in found.objects}


def test_cluster_ingest_loses_nothing_when_a_replica_and_a_node_die(stack: Any) -> None:
    (replica_a, replica_b), lb, cluster = stack
    nodes = Nodes(cluster)
    try:
        create_collection(nodes.client(0), COLLECTIONS[0], module="multi2vec-clip",
                          text_fields=["caption"], image_fields=["image"],
                          service_url=lb.url, token=TOKEN, replication_factor=3, exact=True, replace=True)
        # The default: multi2vec-voyageai and reranker-cohere, baseURL at the balancer.
        # Exact (flat) indexes: each replica builds its own HNSW graph, whose approximate answers
        # may differ by a hit or two from node to node; the test compares what qvl gives them.
        create_collection(nodes.client(0), COLLECTIONS[1], text_fields=["caption"], image_fields=["image"],
                          service_url=lb.url, token=TOKEN, replication_factor=3, exact=True, replace=True)
        objs = _objects()
        batches = [objs[i:i + BATCH] for i in range(0, len(objs), BATCH)]
        down: set[int] = set()
        retried = 0
        longest_stall = 0.0
        last_progress = started = time.monotonic()
        turn = 0
        for b, batch in enumerate(batches):
            if b == KILL_REPLICA_AT:
                replica_a.stop(sig=9)  # SIGKILL: HAProxy's health check takes it out
            if b == KILL_NODE_AT:
                cluster.nodes[2].kill()
                nodes.drop(2)
                down.add(2)
            if b == NODE_BACK_AT:
                cluster.nodes[2].start()
                down.discard(2)
            for name in COLLECTIONS:
                pending = batch
                tries = 0
                while pending:
                    node = turn % 3
                    turn += 1
                    if node in down:
                        continue
                    left = _insert(nodes, node, name, pending)
                    retried += len(left)
                    tries += 1
                    assert tries < 30, f"batch {b} of {name}: {len(left)} objects still refused after 30 tries"
                    if left:
                        time.sleep(0.5)
                    pending = left
            now = time.monotonic()
            longest_stall = max(longest_stall, now - last_progress)
            last_progress = now
        ingest_s = time.monotonic() - started

        # Every replica holds every object: node3 catches up through async replication.
        deadline = time.monotonic() + 180
        for name in COLLECTIONS:
            while True:
                counts = _shard_counts(cluster.nodes[0], name)
                if set(counts.values()) == {N_OBJECTS} and len(counts) == 3:
                    break
                assert time.monotonic() < deadline, f"replicas of {name} never converged: {counts}"
                time.sleep(2)
            _wait_indexed(cluster, name)

        with Client(replica_b.grpc_target, token=TOKEN) as qvl:
            items = [x for o in objs for x in (o["caption"], {"image": o["image"]})]
            embedded = np.asarray([v for v in qvl.embed_stream(iter(items))], dtype=np.float64)

        # ...and every node's own vector index holds every object. The node SIGKILLed during a write
        # may come back with objects in its store whose vectors never reached its index (async
        # replication compares stores, so it does not repair that): Weaviate's repair does.
        repaired = 0
        for name in COLLECTIONS:
            for i, node in enumerate(cluster.nodes):
                missing = N_OBJECTS - len(_indexed(nodes.client(i), name, embedded[0]))
                if missing:
                    repaired += missing
                    node.repair_vector_index(name, MODULE_VECTOR)
            deadline = time.monotonic() + 120
            for i, node in enumerate(cluster.nodes):
                while (n := len(_indexed(nodes.client(i), name, embedded[0]))) != N_OBJECTS:
                    assert time.monotonic() < deadline, f"{name}: {node.node_name} indexes {n} objects after repair"
                    time.sleep(1)

        lost = 0
        for name in COLLECTIONS:
            lost += N_OBJECTS - min(_shard_counts(cluster.nodes[0], name).values())
            # Both modules send caption and image as two document inputs and store their mean.
            want = {str(generate_uuid5(o["key"], name)): (embedded[2 * i] + embedded[2 * i + 1]) / 2
                    for i, o in enumerate(objs)}
            hits = []
            for i, node in enumerate(cluster.nodes):
                col = nodes.client(i).collections.get(name).with_consistency_level(ConsistencyLevel.ALL)
                seen = 0
                for obj in col.iterator(include_vector=True):
                    got = np.asarray(obj.vector[MODULE_VECTOR], dtype=np.float64)
                    w = want[str(obj.uuid)]
                    cos = float(got @ w / (np.linalg.norm(got) * np.linalg.norm(w)))
                    assert cos >= 0.9999, (name, node.node_name, obj.uuid, cos)
                    seen += 1
                assert seen == N_OBJECTS, f"{name}: {node.node_name} lists {seen} objects"
                found = col.query.near_text("red striped picture", limit=10,
                                            return_metadata=MetadataQuery(distance=True),
                                            rerank=Rerank(prop="caption", query="red striped picture"))
                hits.append({str(o.uuid): (o.metadata.distance, o.metadata.rerank_score) for o in found.objects})
            # The same hits with the same scores through every node. Each node embeds the query and
            # asks for the rerank itself (in batches of qvl's own making: float noise of ~1e-6), so
            # only a hit tied with the 10th within that noise may stand in for another, and hits
            # whose scores tie may come in either order.
            assert all(len(h) == 10 for h in hits), (name, hits)
            for other in hits[1:]:
                for side in (hits[0], other):
                    edge = max(d for d, _ in side.values())
                    swapped = set(side) - set(hits[0]).intersection(other)
                    assert all(side[u][0] >= edge - 1e-4 for u in swapped), (name, "not a tie at the edge", hits)
                assert all(abs(other[u][1] - hits[0][u][1]) <= 1e-3 for u in set(hits[0]) & set(other)), (name, hits)
        print(f"\ncluster figures: objects={N_OBJECTS} x {len(COLLECTIONS)} collections lost={lost} retried={retried} "
              f"index_repaired={repaired} longest_stall_s={longest_stall:.1f} ingest_s={ingest_s:.1f} "
              f"balancer_retries={lb.retries()[0]} requests_per_replica={lb.server_requests()}")
        assert lost == 0
    finally:
        nodes.close()
