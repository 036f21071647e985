"""A throwaway single-node Weaviate server (the pinned binary), for tests, the benchmark and the demo.

(``qvl_devtools.launchers.service.ServiceProcess`` is its counterpart for ``qvl serve``.)

``module_env(service_url)`` gives the environment that enables Weaviate's per-collection API
modules (multi2vec-voyageai, -jinaai, -cohere, -nvidia, text2vec-openai, reranker-cohere: a
collection's ``baseURL`` names qvl, no variable does) and wires the four local modules to a running
``qvl serve``; ``WeaviateServer(env=module_env(...))`` starts it on free ports.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import weaviate
from weaviate.classes.init import AdditionalConfig, Timeout

from qvl_devtools.launchers.ports import (
    START_ATTEMPTS,
    PortTaken,
    bind_failed,
    free_port_pairs,
    free_ports,
    hold_for,
    listening_ports,
    release_ports,
)
from qvl_devtools.launchers.process import LocalDataServer, remove_detached

DEFAULT_WEAVIATE_BIN = "/opt/qvl/weaviate-v1.39.0/weaviate-server"
SETUP_HINT = "run `make setup` (scripts/setup.sh) to build it"
NODE_NAME = "node1"
API_MODULES = ("multi2vec-voyageai", "multi2vec-jinaai", "multi2vec-cohere", "multi2vec-nvidia", "text2vec-openai",
               "reranker-cohere")
LOCAL_MODULES = ("multi2vec-clip", "multi2vec-bind", "text2vec-transformers", "reranker-transformers")
MODULES = API_MODULES + LOCAL_MODULES
# Each API module's key variable (the alternative to the client's X-<Provider>-Api-Key header).
API_KEY_VARIABLES = {"multi2vec-voyageai": "VOYAGEAI_APIKEY", "multi2vec-jinaai": "JINAAI_APIKEY",
                     "multi2vec-cohere": "COHERE_APIKEY", "multi2vec-nvidia": "NVIDIA_APIKEY",
                     "text2vec-openai": "OPENAI_APIKEY", "reranker-cohere": "COHERE_APIKEY"}
DEFAULT_TIKTOKEN_CACHE_DIR = "/opt/qvl/tiktoken"


def weaviate_binary() -> Path:
    return Path(os.environ.get("QVL_WEAVIATE_BIN", DEFAULT_WEAVIATE_BIN))


def tiktoken_cache_dir() -> str | None:
    """Where ``make setup`` put OpenAI's cl100k_base file for text2vec-openai (None when absent)."""
    path = os.environ.get("QVL_TIKTOKEN_CACHE_DIR", DEFAULT_TIKTOKEN_CACHE_DIR)
    return path if Path(path).is_dir() and any(Path(path).iterdir()) else None


def module_env(service_url: str | None = None, *, client_timeout: str = "120s", modules: tuple[str, ...] = MODULES,
               api_key: str | None = None) -> dict[str, str]:
    """Weaviate variables that enable ``modules`` and point the local ones at ``service_url``.

    The API modules need no URL here (each collection's ``baseURL`` names qvl); ``api_key`` (qvl's
    token) becomes their key variables, for clients that send no ``X-<Provider>-Api-Key`` header.
    text2vec-openai counts tokens with OpenAI's cl100k_base file before a batch import: the variable
    ``TIKTOKEN_CACHE_DIR`` points at the copy ``make setup`` installs (without it Weaviate downloads
    it, and fails every object of the batch where it cannot).
    The local text2vec-transformers gets separate passage and query URLs (the same service here:
    it tells them apart by ``task_type``); set them to different ``/profiles/{name}`` paths to give
    queries another profile. ``MODULES_CLIENT_TIMEOUT`` bounds one module request: large images and
    videos need more than Weaviate's 50 s default on a CPU.
    """
    unknown = set(modules) - set(MODULES)
    if unknown:
        raise ValueError(f"unknown modules {sorted(unknown)}; expected some of {', '.join(MODULES)}")
    local = [m for m in modules if m in LOCAL_MODULES]
    if local and not service_url:
        raise ValueError(f"the local modules {', '.join(local)} need the service URL")
    url = (service_url or "").rstrip("/")
    env = {
        "ENABLE_MODULES": ",".join(modules),
        "DEFAULT_VECTORIZER_MODULE": "none",
        "MODULES_CLIENT_TIMEOUT": client_timeout,
    }
    if api_key:
        env.update({API_KEY_VARIABLES[m]: api_key for m in modules if m in API_KEY_VARIABLES})
    cache = tiktoken_cache_dir()
    if "text2vec-openai" in modules and cache:
        env["TIKTOKEN_CACHE_DIR"] = cache
    if "multi2vec-clip" in modules:
        env["CLIP_INFERENCE_API"] = url
    if "multi2vec-bind" in modules:
        env["BIND_INFERENCE_API"] = url
    if "text2vec-transformers" in modules:
        env["TRANSFORMERS_PASSAGE_INFERENCE_API"] = url
        env["TRANSFORMERS_QUERY_INFERENCE_API"] = url
    if "reranker-transformers" in modules:
        env["RERANKER_INFERENCE_API"] = url
    return env


class WeaviateServer(LocalDataServer):
    """weaviate-server bound to 127.0.0.1 with every port (REST, gRPC, gossip, data, Raft) free-picked.

    `env` adds to or overrides the server environment, e.g. ``module_env(url)``. A first start that
    cannot bind a port (it exits, or, for the data and debug ports, says so in its log or simply
    does not listen there) goes again on fresh ports with a fresh data directory. Ports and the
    data directory survive `stop(remove=False)`, so `start()` again (or `restart()`) brings the
    same server back on its data. ``node_name`` names the node (a cluster's nodes differ; see
    ``WeaviateCluster``). ``repairable`` turns on async indexing and Weaviate's debug listener (on a
    free port, with its endpoints enabled) so that `repair_vector_index` can be called.
    """

    def __init__(
        self,
        binary: Path | None = None,
        *,
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 120.0,
        node_name: str = NODE_NAME,
        repairable: bool = False,
    ) -> None:
        self.binary = binary or weaviate_binary()
        if not (self.binary.is_file() and os.access(self.binary, os.X_OK)):
            raise FileNotFoundError(f"Weaviate server binary {self.binary} not found; {SETUP_HINT}")
        self.extra_env = dict(env or {})
        self.startup_timeout = startup_timeout
        self.node_name = node_name
        self.repairable = repairable
        self._held: list[int] = []
        hold_for(self, self._held)
        self.pick_ports()
        self._log_start = 0
        self.base_dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    def pick_ports(self) -> None:
        """Fresh ports for every listener (those held before are let go)."""
        old = list(self._held)
        ports = free_ports(3 if self.repairable else 2)
        self.http_port, self.grpc_port = ports[:2]
        self.debug_port = ports[2] if self.repairable else None
        self.gossip_port, self.raft_port = free_port_pairs(2)
        self.data_port, self.raft_rpc_port = self.gossip_port + 1, self.raft_port + 1
        self._held[:] = [*ports, self.gossip_port, self.data_port, self.raft_port, self.raft_rpc_port]
        release_ports(old)
        self.settled = False  # ready once on these ports: they are its address (and its peers know them)

    @property
    def ports(self) -> dict[str, int]:
        """Every port the server binds, by what it is for."""
        ports = {"http": self.http_port, "grpc": self.grpc_port, "gossip": self.gossip_port,
                 "data": self.data_port, "raft": self.raft_port, "raft_rpc": self.raft_rpc_port}
        return ports | ({"debug": self.debug_port} if self.debug_port is not None else {})

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def data_dir(self) -> Path:
        return self._base() / "data"

    @property
    def log_path(self) -> Path:
        return self._base() / "weaviate.log"

    def server_env(self) -> dict[str, str]:
        env = {
            # A clean environment: Weaviate reads hundreds of variables, none should leak in.
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self._base()),
            "PERSISTENCE_DATA_PATH": str(self.data_dir),
            "AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED": "true",
            "DEFAULT_VECTORIZER_MODULE": "none",
            "DISABLE_TELEMETRY": "true",
            "GO_PROFILING_DISABLE": "true",
            "LOG_LEVEL": "info",
            "GRPC_PORT": str(self.grpc_port),
            "CLUSTER_HOSTNAME": self.node_name,
            "CLUSTER_BIND_ADDR": self.host,
            "CLUSTER_ADVERTISE_ADDR": self.host,
            "CLUSTER_GOSSIP_BIND_PORT": str(self.gossip_port),
            "CLUSTER_DATA_BIND_PORT": str(self.data_port),
            "RAFT_PORT": str(self.raft_port),
            "RAFT_INTERNAL_RPC_PORT": str(self.raft_rpc_port),
            "RAFT_JOIN": self.node_name,
            "RAFT_BOOTSTRAP_EXPECT": "1",
        }
        if self.debug_port is not None:
            # Weaviate repairs a vector index only from its debug listener, and only with async
            # indexing (the objects it finds missing go through the indexing queue).
            env.update({"GO_PROFILING_DISABLE": "false", "GO_PROFILING_PORT": str(self.debug_port),
                        "DEBUG_ENDPOINTS_ENABLED": "true", "ASYNC_INDEXING": "true"})
        env.update(self.extra_env)
        return env

    def local_shards(self, collection: str) -> list[str]:
        """The names of the shards of ``collection`` this node holds (a replica of each, or some)."""
        query = urllib.parse.urlencode({"output": "verbose", "collection": collection})
        with urllib.request.urlopen(f"{self.url}/v1/nodes?{query}", timeout=30) as response:
            body = json.load(response)
        return [s["name"] for n in body["nodes"] if n["name"] == self.node_name
                for s in n.get("shards") or [] if s["class"] == collection]

    def repair_vector_index(self, collection: str, vector: str) -> list[str]:
        """Asks this node to index again every object of ``collection`` that its own ``vector``
        index lacks (Weaviate's ``/debug/index/repair/vector``, shard by shard; the repair runs in
        the background). Returns the shards. Needs ``repairable``.

        A node SIGKILLed during a write can come back with objects in its object store whose vectors
        never reached its vector index; async replication compares object stores, so it does not
        see them, and the node's searches miss those objects until this repair."""
        if self.debug_port is None:
            raise RuntimeError("start the server with repairable=True to repair its vector indexes")
        shards = self.local_shards(collection)
        for shard in shards:
            query = urllib.parse.urlencode({"collection": collection, "shard": shard, "vector": vector})
            with urllib.request.urlopen(f"http://{self.host}:{self.debug_port}/debug/index/repair/vector?{query}",
                                        timeout=30) as response:
                if response.status != 202:
                    raise RuntimeError(f"repair of {collection}/{shard} on {self.node_name}: HTTP {response.status}")
        return shards

    def start(self) -> WeaviateServer:
        if self._process is not None:
            return self
        for attempt in range(1, START_ATTEMPTS + 1):
            self.launch()
            try:
                self.wait_ready()
                return self
            except PortTaken:
                if self.settled or attempt == START_ATTEMPTS:
                    self.stop(remove=False)
                    raise
                self.stop(remove=True)  # a data directory that knows nothing of the old ports
                self.pick_ports()
            except BaseException:
                self.stop(remove=False)
                raise
        raise AssertionError("unreachable")

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def kill(self) -> None:
        """SIGKILL, as a crash would; the data and ports stay for `start()`."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def launch(self) -> None:
        """Start the process without waiting: the nodes of a cluster become ready only together."""
        if self._process is not None:
            return
        if self.base_dir is None:
            self.base_dir = Path(tempfile.mkdtemp(prefix="qvl-weaviate-"))
            self.data_dir.mkdir()
        command = [str(self.binary), "--host", self.host, "--port", str(self.http_port), "--scheme", "http"]
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._log_file = self.log_path.open("ab")
        self._process = subprocess.Popen(
            command,
            cwd=self.base_dir,
            env=self.server_env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self, *, remove: bool = True, timeout: float = 30.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`; with remove (the default) the data goes too."""
        process, self._process = self._process, None
        try:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        finally:
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None
            if remove and self.base_dir is not None:
                remove_detached(self.base_dir)
                self.base_dir = None

    def wait_ready(self, settle_s: float = 10.0) -> None:
        """Until /v1/.well-known/ready answers and the server listens on every port it was given.
        Raises ``PortTaken`` when it could not bind one: it exited saying so, or, ready, it does
        not listen on one within ``settle_s`` (Weaviate logs a taken debug port and goes on, and
        says nothing of a taken data port)."""
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        ready_url = f"{self.url}/v1/.well-known/ready"
        while True:
            code = self._process.poll()
            if code is not None:
                message = f"weaviate-server exited with {code} during start-up\n--- server log ---\n{self.log_tail()}"
                raise PortTaken(message) if self._bind_failed() else RuntimeError(message)
            try:
                with urllib.request.urlopen(ready_url, timeout=2) as response:
                    if 200 <= response.status < 300:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"weaviate-server not ready at {ready_url} after {self.startup_timeout:.0f} s\n"
                    f"--- server log ---\n{self.log_tail()}"
                )
            time.sleep(0.25)
        settle = time.monotonic() + settle_s
        while missing := {name: port for name, port in self.ports.items()
                          if port not in listening_ports([self._process.pid])}:
            if time.monotonic() > settle or self._bind_failed():
                raise PortTaken(f"weaviate-server {self.node_name} does not listen on its {missing} "
                                f"(another process has the port)\n--- server log ---\n{self.log_tail()}")
            time.sleep(0.1)
        self.settled = True

    def _bind_failed(self) -> bool:
        with open(self.log_path, "rb") as log:
            log.seek(self._log_start)
            return bind_failed(log.read().decode(errors="replace"))


def connect(server: WeaviateServer, *, timeout_s: float = 300.0,
            headers: Mapping[str, str] | None = None) -> weaviate.WeaviateClient:
    """A v4 client for ``server``; long timeouts because module calls on a CPU can be slow.
    ``headers`` go with every request (``connectors.weaviate.api_key_headers(token)``: qvl's token
    for the API modules)."""
    return weaviate.connect_to_custom(
        http_host=server.host, http_port=server.http_port, http_secure=False,
        grpc_host=server.host, grpc_port=server.grpc_port, grpc_secure=False,
        headers=dict(headers) if headers else None,
        additional_config=AdditionalConfig(timeout=Timeout(init=30, query=timeout_s, insert=timeout_s)),
    )

