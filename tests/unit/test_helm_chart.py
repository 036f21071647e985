"""deploy/helm/qvl rendered and linted by the real `helm` binary (scripts/setup.sh builds it; no
cluster runs here): the objects a cluster would get are parsed and checked for what qvl needs,
and the rendered settings file is loaded by qvl's own settings object."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from vectorizer_service.core.settings import Settings

ROOT = Path(__file__).parents[2]
CHART = ROOT / "deploy" / "helm" / "qvl"
WEAVIATE_VALUES = ROOT / "deploy" / "helm" / "weaviate-values.yaml"
HELM = os.environ.get("QVL_HELM", "/opt/qvl/bin/helm")

FULL = [
    "--set", "token.value=s3cret",
    "--set", "tls.secretName=qvl-tls",
    "--set", "worker.enabled=true",
    "--set", "worker.dsnSecret=app-db",
    "--set", "worker.args={--batch,32}",
    "--set", "models.persistence.enabled=true",
    "--set", "settings.profiles.products.query_instruction=Find the product a shopper describes.",
    "--set", "settings.profiles.products.dimensions=1024",
    "--set", "settings.drain_seconds=60",
]


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    if not Path(HELM).is_file():
        pytest.fail(f"helm not found at {HELM}: `make setup` (scripts/setup.sh) builds it")
    return subprocess.run([HELM, *args], capture_output=True, text=True, timeout=120)


def render(*args: str, release: str = "t", namespace: str = "default") -> dict[tuple[str, str], dict[str, Any]]:
    done = helm("template", release, str(CHART), "--namespace", namespace, *args)
    assert done.returncode == 0, done.stderr
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    by_key = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    assert len(by_key) == len(docs), "two objects of one kind share a name"
    return by_key


def only(objs: dict[tuple[str, str], dict[str, Any]], kind: str, suffix: str = "") -> dict[str, Any]:
    found = [o for (k, name), o in objs.items() if k == kind and name.endswith(suffix)]
    assert len(found) == 1, f"{kind} *{suffix}: {[n for k, n in objs if k == kind]}"
    return found[0]


def main_service(objs: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    return next(o for (k, n), o in objs.items() if k == "Service" and not n.endswith("-headless"))


def server(objs: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    return next(o for (k, n), o in objs.items() if k == "Deployment" and not n.endswith("-worker"))


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


@pytest.mark.parametrize("args", [[], FULL], ids=["defaults", "everything-on"])
def test_chart_lints_strict(args: list[str]) -> None:
    done = helm("lint", "--strict", str(CHART), *args)
    assert done.returncode == 0, done.stdout + done.stderr


def test_server_pods_gpu_probes_ports() -> None:
    objs = render()
    dep = server(objs)
    pod = dep["spec"]["template"]
    (qvl,) = pod["spec"]["containers"]
    assert qvl["resources"]["limits"]["nvidia.com/gpu"] == 1
    ports = {p["name"]: p["containerPort"] for p in qvl["ports"]}
    assert ports == {"http": 8080, "grpc": 50051}
    env = env_of(qvl)
    assert (env["QVL_HTTP_PORT"], env["QVL_GRPC_PORT"]) == ("8080", "50051")
    # Readiness follows model load and drain; liveness follows a model process that fails every batch.
    assert qvl["readinessProbe"]["httpGet"]["path"] == "/.well-known/ready"
    assert qvl["startupProbe"]["httpGet"]["path"] == "/.well-known/ready"
    assert qvl["livenessProbe"]["httpGet"]["path"] == "/.well-known/live"
    for probe in ("readinessProbe", "startupProbe", "livenessProbe"):
        assert qvl[probe]["httpGet"]["port"] in ports and qvl[probe]["httpGet"]["scheme"] == "HTTP"
    assert "QVL_TOKEN" not in env
    # Without a token the notes warn; the server still renders.
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def test_services_and_budget_select_server_pods_only() -> None:
    objs = render(*FULL)
    labels = server(objs)["spec"]["template"]["metadata"]["labels"]
    worker_labels = only(objs, "Deployment", "-worker")["spec"]["template"]["metadata"]["labels"]
    svc = main_service(objs)
    headless = only(objs, "Service", "-headless")
    pdb = only(objs, "PodDisruptionBudget")
    for selector in (svc["spec"]["selector"], headless["spec"]["selector"], pdb["spec"]["selector"]["matchLabels"],
                     server(objs)["spec"]["selector"]["matchLabels"]):
        assert selects(selector, labels)
        assert not selects(selector, worker_labels), "a Service or the budget would pick the worker's pods"
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is False
    assert {p["name"]: p["targetPort"] for p in svc["spec"]["ports"]} == {"http": "http", "grpc": "grpc"}
    assert pdb["spec"]["maxUnavailable"] == 1


def test_rendered_settings_file_is_valid_qvl_settings(tmp_path: Path) -> None:
    objs = render(*FULL)
    data = only(objs, "ConfigMap", "-settings")["data"]["settings.yaml"]
    path = tmp_path / "settings.yaml"
    path.write_text(data)
    settings = Settings.load(path)
    assert settings.embedding_model == "Qwen/Qwen3-VL-Embedding-2B"
    assert settings.profiles["products"].dimensions == 1024
    assert settings.drain_seconds == 60
    dep = server(objs)
    (qvl,) = dep["spec"]["template"]["spec"]["containers"]
    mount = next(m for m in qvl["volumeMounts"] if m["name"] == "settings")
    assert env_of(qvl)["QVL_SETTINGS_FILE"] == mount["mountPath"]
    # The pod outlives qvl's drain: grace = drain + pre-stop pause + margin.
    assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 60 + 5
    # A settings change rolls the pods (qvl reads the file once).
    assert render()[("Deployment", "t-qvl")]["spec"]["template"]["metadata"]["annotations"][
        "checksum/settings"] != dep["spec"]["template"]["metadata"]["annotations"]["checksum/settings"]


def test_token_tls_and_worker_wiring() -> None:
    objs = render(*FULL, release="qvl", namespace="search")
    dep = server(objs)
    (qvl,) = dep["spec"]["template"]["spec"]["containers"]
    env = env_of(qvl)
    secret = only(objs, "Secret", "-token")
    assert env["QVL_TOKEN"]["secretKeyRef"] == {"name": secret["metadata"]["name"], "key": "token"}
    assert (env["QVL_TLS_CERT"], env["QVL_TLS_KEY"]) == ("/etc/qvl/tls/tls.crt", "/etc/qvl/tls/tls.key")
    assert qvl["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    worker = only(objs, "Deployment", "-worker")
    (w,) = worker["spec"]["template"]["spec"]["containers"]
    assert w["args"] == ["worker", "--batch", "32"]
    wenv = env_of(w)
    headless = only(objs, "Service", "-headless")
    assert wenv["QVL_SERVICE"] == f"dns:///{headless['metadata']['name']}.search.svc:50051"
    assert wenv["QVL_TOKEN"] == env["QVL_TOKEN"]
    assert wenv["QVL_PG_DSN"]["secretKeyRef"] == {"name": "app-db", "key": "dsn"}
    assert wenv["QVL_SERVICE_CA_FILE"] == "/etc/qvl/tls/ca.crt"
    claim = only(objs, "PersistentVolumeClaim")
    models = next(v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "models")
    assert models["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]


@pytest.mark.parametrize("args, message", [
    (["--set", "settings.http_port=9000"], "settings.http_port is set by the chart"),
    (["--set", "settings.token=x"], "settings.token is set by the chart"),
    (["--set", "worker.enabled=true"], "worker.enabled needs worker.dsnSecret"),
])
def test_misconfiguration_refused_at_render(args: list[str], message: str) -> None:
    done = helm("template", "t", str(CHART), *args)
    assert done.returncode != 0 and message in done.stderr, done.stderr


def test_weaviate_values_point_at_the_qvl_service() -> None:
    """deploy/helm/weaviate-values.yaml is for Weaviate's own chart (not vendored here): its local
    module URLs name the Service the qvl chart makes for release `qvl` in namespace `qvl`, and the
    per-collection modules are on."""
    objs = render(release="qvl", namespace="qvl")
    svc = main_service(objs)
    http_port = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "http")
    want = f"http://{svc['metadata']['name']}.qvl.svc:{http_port}"
    modules = yaml.safe_load(WEAVIATE_VALUES.read_text())["modules"]
    urls = {name: m["inferenceUrl"] for name, m in modules.items() if "inferenceUrl" in m}
    assert urls and set(urls.values()) == {want}, urls
    assert all(modules[name]["enabled"] is False for name in urls), "enabled would deploy Weaviate's own container"
    for name in ("multi2vec-voyageai", "text2vec-openai", "reranker-cohere"):
        assert modules[name]["enabled"] is True and modules[name]["apiKey"]
