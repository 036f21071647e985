"""docker-compose.yml (Docker cannot run here): every module URL, DSN and gRPC target names a
service that exists and a port it listens on; HTTP goes through HAProxy (docker/haproxy.cfg) to
every qvl replica, gRPC to every replica by their shared DNS name; health checks gate the start
order."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from qvl_devtools.launchers.haproxy import haproxy_binary, haproxy_config
from qvl_devtools.launchers.weaviate import API_MODULES

ROOT = Path(__file__).parents[2]
HAPROXY_CFG = ROOT / "docker" / "haproxy.cfg"
BALANCER = "qvl"  # the HAProxy service
REPLICA_ALIAS = "qvl-replicas"
MODULE_URL_VARS = {
    "multi2vec-clip": ("CLIP_INFERENCE_API",),
    "multi2vec-bind": ("BIND_INFERENCE_API",),
    "text2vec-transformers": ("TRANSFORMERS_PASSAGE_INFERENCE_API", "TRANSFORMERS_QUERY_INFERENCE_API"),
    "reranker-transformers": ("RERANKER_INFERENCE_API",),
}
SUBST = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")


def _expand(value: Any) -> Any:
    """Compose's ${VAR:-default} with nothing set in the environment (${VAR:?message}, which compose
    refuses to start without, as a placeholder)."""
    if isinstance(value, str):
        return SUBST.sub(lambda m: f"<{m.group(1)} required>" if m.group(2) == "?" else m.group(3) or "", value)
    if isinstance(value, list):
        return [_expand(v) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    return value


def _load(name: str) -> dict[str, Any]:
    return _expand(yaml.safe_load((ROOT / name).read_text()))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _load("docker-compose.yml")


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _listens(name: str, service: dict[str, Any]) -> set[int]:
    """Container ports a service listens on: its published/exposed ports and its QVL_*_PORT / GRPC_PORT."""
    ports = {int(str(p).rsplit(":", 1)[-1].split("/")[0]) for p in service.get("ports", [])}
    ports |= {int(p) for p in service.get("expose", [])}
    env = _env(service)
    ports |= {int(env[k]) for k in ("QVL_HTTP_PORT", "QVL_GRPC_PORT", "GRPC_PORT") if k in env}
    if name == "postgres":
        ports.add(5432)
    return ports


def _flag(command: list[str], flag: str) -> str:
    assert flag in command, f"{flag} missing from {command}"
    return command[command.index(flag) + 1]


def _haproxy() -> dict[str, Any]:
    """docker/haproxy.cfg: its sections' lines, the frontend's port, the backend's servers."""
    sections: dict[str, list[str]] = {}
    current = ""
    for raw in HAPROXY_CFG.read_text().splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line:
            continue
        if not line[0].isspace():
            current = line.strip()
            sections[current] = []
        else:
            sections[current].append(" ".join(line.split()))
    [frontend] = [k for k in sections if k.startswith("frontend ")]
    [backend] = [k for k in sections if k.startswith("backend ")]
    [bind] = [line for line in sections[frontend] if line.startswith("bind ")]
    servers = {}
    for line in sections[backend]:
        if line.startswith("server "):
            _, name, address, *params = line.split()
            host, port = address.rsplit(":", 1)
            servers[name] = (host, int(port), params)
    return {"sections": sections, "port": int(bind.split()[1].rsplit(":", 1)[1]), "servers": servers,
            "defaults": sections["defaults"], "backend": sections[backend]}


def _replicas(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The qvl serve replicas: the services that answer to the replicas' shared DNS name."""
    return {name: s for name, s in services.items()
            if REPLICA_ALIAS in ((s.get("networks") or {}).get("default") or {}).get("aliases", [])}


def _http_port(services: dict[str, dict[str, Any]], name: str) -> int:
    """Where a service takes qvl's HTTP: a replica's QVL_HTTP_PORT, or the HAProxy frontend's port."""
    if name == BALANCER:
        return int(_haproxy()["port"])
    return int(_env(services[name])["QVL_HTTP_PORT"])


def test_every_module_url_points_at_qvls_http_port(services: dict[str, dict[str, Any]]) -> None:
    env = _env(services["weaviate"])
    modules = env["ENABLE_MODULES"].split(",")
    # The per-collection API modules name no URL in the environment: a collection's baseURL does.
    assert set(modules) == set(MODULE_URL_VARS) | set(API_MODULES)
    for module in set(modules) & set(MODULE_URL_VARS):
        for var in MODULE_URL_VARS[module]:
            url = urlsplit(env[var])
            assert url.scheme == "http", f"{var}: {env[var]}"
            assert url.hostname in services, f"{var} names {url.hostname}, not a service"
            assert url.port == _http_port(services, url.hostname), f"{var}: {env[var]} is not the HTTP port"
            assert url.path in ("", "/") or url.path.startswith(("/profiles/", "/dim/")), var
    # text2vec-transformers takes one common URL or both of passage and query, never a mix.
    assert "TRANSFORMERS_INFERENCE_API" not in env


def test_weaviate_settings(services: dict[str, dict[str, Any]]) -> None:
    weaviate = services["weaviate"]
    assert weaviate["image"] == "cr.weaviate.io/semitechnologies/weaviate:1.39.0"
    env = _env(weaviate)
    timeout = re.fullmatch(r"(\d+)s", env["MODULES_CLIENT_TIMEOUT"])
    assert timeout and int(timeout.group(1)) >= 50, "keep at least Weaviate's 50s default"
    for name, replica in _replicas(services).items():
        service_deadline = float(_env(replica)["QVL_REQUEST_TIMEOUT_S"])
        assert service_deadline >= int(timeout.group(1)), f"{name} would give up on a module call before Weaviate"
        # and HAProxy must not cut a request the replica is still allowed to work on
        haproxy_timeout = {line.split()[1]: line.split()[2] for line in _haproxy()["defaults"]
                           if line.startswith("timeout ")}
        assert int(haproxy_timeout["server"].rstrip("s")) >= service_deadline
    assert env.get("MODULES_VALIDATE_BASE_URL", "false").lower() in ("false", "0", "off")  # it blocks private IPs
    assert env["DEFAULT_VECTORIZER_MODULE"] == "none"
    assert int(env["GRPC_PORT"]) in _listens("weaviate", weaviate)
    assert env["PERSISTENCE_DATA_PATH"] in {v.split(":", 1)[1] for v in weaviate["volumes"]}
    # as the Helm values: the index repair of docs/scaling.md is there to use
    helm = yaml.safe_load((ROOT / "deploy/helm/weaviate-values.yaml").read_text())
    assert env["ASYNC_INDEXING"] == helm["env"]["ASYNC_INDEXING"] == "true"


def test_dsns_name_the_postgres_service_and_its_credentials(services: dict[str, dict[str, Any]]) -> None:
    """The install runs as the superuser; the worker (which refuses a superuser) as the login that the
    install makes and grants qvl_worker, with the password the install sets."""
    pg_env = _env(services["postgres"])
    install = services["pg-install"]
    for name in ("pg-install", "worker"):
        dsn = urlsplit(_flag(services[name]["command"], "--dsn"))
        assert dsn.scheme in ("postgresql", "postgres")
        assert dsn.hostname in services and services[dsn.hostname] is services["postgres"], name
        assert dsn.port in _listens("postgres", services["postgres"])
        assert dsn.path.lstrip("/") == pg_env["POSTGRES_DB"], name
        if name == "pg-install":
            assert dsn.username == pg_env["POSTGRES_USER"] and dsn.password == pg_env["POSTGRES_PASSWORD"]
        else:
            assert dsn.username == _flag(install["command"], "--worker-login") != pg_env["POSTGRES_USER"]
            assert dsn.password == _env(install)["QVL_WORKER_PASSWORD"]


def test_service_addresses_of_the_worker_and_the_installer(services: dict[str, dict[str, Any]]) -> None:
    # gRPC: every replica by their shared name (round_robin over the addresses Docker's DNS gives)
    target = _flag(services["worker"]["command"], "--service")
    assert target.startswith("dns:///"), target
    host, port = target.removeprefix("dns:///").rsplit(":", 1)
    replicas = _replicas(services)
    assert host == REPLICA_ALIAS and len(replicas) >= 2
    assert all(int(port) == int(_env(r)["QVL_GRPC_PORT"]) for r in replicas.values())  # gRPC, not HTTP
    # HTTP: PL/Python reaches the replicas through HAProxy
    url = urlsplit(_flag(services["pg-install"]["command"], "--service-url"))
    assert url.hostname == BALANCER and url.port == _http_port(services, url.hostname)


def test_haproxy_fronts_every_replica_with_health_checks_and_retries(services: dict[str, dict[str, Any]]) -> None:
    cfg = _haproxy()
    replicas = _replicas(services)
    assert {name: (host, port) for name, (host, port, _) in cfg["servers"].items()} == {
        name: (name, int(_env(r)["QVL_HTTP_PORT"])) for name, r in replicas.items()}
    assert all("check" in params for _, _, params in cfg["servers"].values())
    backend, defaults = cfg["backend"], cfg["defaults"]
    assert "option httpchk GET /.well-known/ready" in backend and "http-check expect status 204" in backend
    [retry_on] = [line.split()[1:] for line in defaults if line.startswith("retry-on ")]
    assert {"conn-failure", "empty-response", "503"} <= set(retry_on)
    assert "500" not in retry_on and "junk-response" not in retry_on  # a request that broke a replica is not replayed
    assert "option redispatch 1" in defaults
    balancer = services[BALANCER]
    assert "./docker/haproxy.cfg:/etc/haproxy/haproxy.cfg:ro" in balancer["volumes"]
    assert cfg["port"] in _listens(BALANCER, balancer)
    assert set(balancer["depends_on"]) == set(replicas)
    check = " ".join(balancer["healthcheck"]["test"])
    assert f"/dev/tcp/127.0.0.1/{cfg['port']}" in check and "GET /.well-known/ready" in check and " 204 " in check


def test_the_tests_haproxy_config_is_the_compose_one() -> None:
    """The integration tests run a generated config: the directives that decide where a request
    goes, and when it is sent again, are the same as docker/haproxy.cfg's."""
    generated = haproxy_config([("qvl-a", "127.0.0.1:1"), ("qvl-b", "127.0.0.1:2")], bind="127.0.0.1:3")
    lines = {" ".join(line.split()) for line in generated.splitlines()}
    cfg = _haproxy()
    for line in [*cfg["defaults"], *cfg["backend"]]:
        if line.split()[0] in ("retries", "retry-on", "balance", "http-check") or line.startswith(
                ("option redispatch", "option httpchk")):
            assert line in lines, line


def test_haproxy_accepts_the_compose_config() -> None:
    """Debian's haproxy (scripts/setup.sh installs it) checks docker/haproxy.cfg; the replicas'
    names do not resolve here, which it only warns about."""
    done = subprocess.run([str(haproxy_binary()), "-c", "-f", str(HAPROXY_CFG)], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr


def test_health_checks_and_start_order(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for dep, spec in (service.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            condition = spec["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}, which has no health check"
            elif condition == "service_completed_successfully":
                assert services[dep].get("restart") == "no", f"{dep} is a one-shot job"
            else:
                pytest.fail(f"{name}: depends_on {dep} without a health condition")
    order = {name: set(s.get("depends_on") or {}) for name, s in services.items()}
    assert BALANCER in order["weaviate"]  # Weaviate's modules give up when qvl is not ready in 120 s
    assert {"postgres", BALANCER} <= order["pg-install"]
    assert "pg-install" in order["worker"]
    for name, replica in _replicas(services).items():
        check = " ".join(replica["healthcheck"]["test"])
        assert f":{_http_port(services, name)}/.well-known/ready" in check
    assert "/v1/.well-known/ready" in " ".join(services["weaviate"]["healthcheck"]["test"])
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]


def test_ports_volumes_and_builds(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    published = [str(p).rsplit(":", 1)[0] for s in services.values() for p in s.get("ports", [])]
    assert len(published) == len(set(published)), f"a host port is published twice: {published}"
    assert all(p.startswith("127.0.0.1:") for p in published), "publish on loopback by default"
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert source.startswith(("/", ".")) or source in compose["volumes"], f"{name}: volume {source}"
        if "build" in service:
            assert (ROOT / service["build"]["context"] / service["build"]["dockerfile"]).is_file(), name
    images = {s.get("image") for s in services.values() if "build" in s}
    for name, service in services.items():
        if "build" not in service and service["image"] in images:
            assert service.get("pull_policy") == "never", f"{name} must use the image built here"


def test_images_build_what_the_services_run() -> None:
    qvl = (ROOT / "docker" / "qvl.Dockerfile").read_text()
    assert 'ENTRYPOINT ["qvl"]' in qvl and "QVL_SQL_DIR=/app/sql" in qvl and "COPY sql ./sql" in qvl
    postgres = (ROOT / "docker" / "postgres.Dockerfile").read_text()
    assert "pgvector" in postgres and "plpython3" in postgres
    haproxy = (ROOT / "docker" / "haproxy.Dockerfile").read_text()
    assert "FROM debian:bookworm" in haproxy and "apt-get install" in haproxy and " haproxy" in haproxy
    assert '"/etc/haproxy/haproxy.cfg"' in haproxy  # where the compose file mounts docker/haproxy.cfg


def test_gpu_override_changes_only_the_model_servers(services: dict[str, dict[str, Any]]) -> None:
    gpu = _load("docker-compose.gpu.yml")["services"]
    assert set(gpu) <= set(services)
    replicas = _replicas(services)
    assert set(replicas) <= set(gpu)  # every replica on a GPU
    for name in replicas:
        assert gpu[name]["environment"]["QVL_DEVICE"] == "cuda"
        [device] = gpu[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    built = [name for name in gpu if "build" in gpu[name]]
    assert built and all("build" in services[name] for name in built)
    assert len({gpu[n]["image"] for n in gpu}) == 1  # worker and installer run the same image


def test_qvl_containers_need_a_token_and_run_locked_down(services: dict[str, dict[str, Any]]) -> None:
    """As the Helm chart: no tokenless default (compose refuses to start without QVL_TOKEN, saying
    so); a read-only root filesystem with a tmpfs on /tmp (torch's import needs a writable temporary
    directory); no new privileges; every capability dropped; Docker's default seccomp profile."""
    raw = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    qvl_image = [name for name, s in services.items() if s.get("image") == "qvl:latest"]
    assert set(_replicas(services)) | {"worker", "pg-install"} <= set(qvl_image)
    for name in qvl_image:
        token = str(raw[name]["environment"]["QVL_TOKEN"])
        assert re.fullmatch(r"\$\{QVL_TOKEN:\?[^}]+\}", token), f"{name}: QVL_TOKEN is {token}"
        service = services[name]
        assert service.get("read_only") is True, name
        assert "/tmp" in service.get("tmpfs", []), name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        assert service.get("cap_drop") == ["ALL"] and not service.get("cap_add"), name
        assert not [o for o in service.get("security_opt", []) if o.startswith("seccomp")], name
        assert not service.get("privileged"), name


def test_the_worker_s_health_check_reads_the_file_it_touches(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    path = _env(worker)["QVL_WORKER_ALIVE_FILE"]
    assert path.startswith("/tmp/")  # on the tmpfs: the root filesystem is read-only
    check = worker["healthcheck"]["test"]
    assert check[0] == "CMD" and check[1] == "python" and path in check
