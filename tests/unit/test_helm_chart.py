"""deploy/helm/qvl rendered and linted by the real `helm` binary (scripts/setup.sh builds it; no
cluster runs here): the objects a cluster would get are parsed and checked for what qvl needs,
and the rendered settings file is loaded by qvl's own settings object."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from vectorizer_service.core.settings import Settings

ROOT = Path(__file__).parents[2]
CHART = ROOT / "deploy" / "helm" / "qvl"
WEAVIATE_VALUES = ROOT / "deploy" / "helm" / "weaviate-values.yaml"
HELM = os.environ.get("QVL_HELM", "/opt/qvl/bin/helm")

# The least a release needs: a token (the chart refuses to render without one).
MINIMAL = ["--set", "token.existingSecret=qvl-token"]
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


def pod_of(objs: dict[tuple[str, str], dict[str, Any]], suffix: str = "") -> dict[str, Any]:
    """The pod spec of the server's Deployment, or of the worker's (suffix "-worker")."""
    dep = only(objs, "Deployment", suffix) if suffix else server(objs)
    return dep["spec"]["template"]["spec"]


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"the test reads matchLabels only: {selector}"
    return selects(selector.get("matchLabels") or {}, labels)


def admits(policy: dict[str, Any], port: int, *, labels: dict[str, str], namespace: str, release_ns: str) -> bool:
    """Whether a pod with ``labels`` in ``namespace`` may open ``port`` on the pods ``policy`` selects,
    by NetworkPolicy's rules (a peer without namespaceSelector means the policy's own namespace;
    every namespace carries its name as the label kubernetes.io/metadata.name)."""
    ns_labels = {"kubernetes.io/metadata.name": namespace}
    for rule in policy["spec"].get("ingress") or []:
        if rule.get("ports") and port not in {p["port"] for p in rule["ports"]}:
            continue
        for peer in rule.get("from") or [{}]:
            if "ipBlock" in peer:
                continue
            ns_ok = matches(peer["namespaceSelector"], ns_labels) if "namespaceSelector" in peer \
                else namespace == release_ns
            if ns_ok and ("podSelector" not in peer or matches(peer["podSelector"], labels)):
                return True
    return False


def policy_for(objs: dict[tuple[str, str], dict[str, Any]], pod_labels: dict[str, str]) -> dict[str, Any]:
    found = [o for (k, _), o in objs.items() if k == "NetworkPolicy" and matches(o["spec"]["podSelector"], pod_labels)]
    assert len(found) == 1, f"{len(found)} NetworkPolicies select {pod_labels}"
    return found[0]


def test_no_token_is_refused_at_render() -> None:
    """A server that anyone who reaches it may use is not a default: without token.existingSecret or
    token.value the chart refuses to render, and says what to set."""
    done = helm("template", "t", str(CHART))
    assert done.returncode != 0
    assert "token.existingSecret" in done.stderr and "token.value" in done.stderr, done.stderr
    objs = render(*MINIMAL, "--set", "worker.enabled=true", "--set", "worker.dsnSecret=app-db")
    for suffix in ("", "-worker"):
        (container,) = pod_of(objs, suffix)["containers"]
        assert env_of(container)["QVL_TOKEN"]["secretKeyRef"] == {"name": "qvl-token", "key": "token"}, suffix


@pytest.mark.parametrize("args", [MINIMAL, FULL], ids=["minimal", "everything-on"])
def test_chart_lints_strict(args: list[str]) -> None:
    done = helm("lint", "--strict", str(CHART), *args)
    assert done.returncode == 0, done.stdout + done.stderr


def test_server_pods_gpu_probes_ports() -> None:
    objs = render(*MINIMAL)
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
    assert env["QVL_TOKEN"]["secretKeyRef"]["name"] == "qvl-token"
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
    assert render(*MINIMAL)[("Deployment", "t-qvl")]["spec"]["template"]["metadata"]["annotations"][
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
    # A plain kubernetes.io/tls Secret (tls.crt, tls.key): the worker verifies against the system's CAs.
    assert wenv["QVL_SERVICE_TLS"] == "true" and "QVL_SERVICE_CA_FILE" not in wenv
    claim = only(objs, "PersistentVolumeClaim")
    models = next(v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "models")
    assert models["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]


@pytest.mark.parametrize("args, message", [
    (["--set", "settings.http_port=9000"], "settings.http_port is set by the chart"),
    (["--set", "settings.token=x"], "settings.token is set by the chart"),
    (["--set", "worker.enabled=true"], "worker.enabled needs worker.dsnSecret"),
    # values.schema.json (generated from qvl's Settings): what `qvl serve` would refuse at start,
    # after the pods were scheduled, is refused at render with the setting named.
    (["--set", "settings.bogus_setting=1"], "'bogus_setting' not allowed"),
    (["--set", "settings.dtype=float64"], "/settings/dtype"),
    (["--set", "settings.drain_seconds=soon"], "/settings/drain_seconds"),
    (["--set", "settings.profiles.products.dimensions=many"], "/settings/profiles/products/dimensions"),
])
def test_misconfiguration_refused_at_render(args: list[str], message: str) -> None:
    done = helm("template", "t", str(CHART), *MINIMAL, *args)
    assert done.returncode != 0 and message in done.stderr, done.stderr


def test_the_values_schema_is_generated_from_qvl_settings() -> None:
    """deploy/helm/qvl/values.schema.json is what `python -m qvl_devtools.helm_schema` writes from
    vectorizer_service/core/settings.py: regenerate it when a setting changes."""
    from qvl_devtools.helm_schema import SCHEMA_PATH, values_schema

    assert json.loads(SCHEMA_PATH.read_text(encoding="utf-8")) == values_schema(), \
        "regenerate it: python -m qvl_devtools.helm_schema"
    settings = values_schema()["properties"]["settings"]["properties"]
    assert set(settings) == set(Settings.model_fields)


def test_every_setting_the_chart_sets_renders_and_loads(tmp_path: Path) -> None:
    """The schema refuses nothing qvl takes: the chart's own defaults and values of each kind."""
    objs = render(*FULL, "--set", "settings.video_codecs=h264\\,vp9", "--set-json",
                  'settings.allow_uri_roots=["/media"]', "--set", "settings.torch_threads=null",
                  "--set", "settings.max_wait_ms=2.5", "--set", "settings.share_prefix=false")
    path = tmp_path / "settings.yaml"
    path.write_text(only(objs, "ConfigMap", "-settings")["data"]["settings.yaml"])
    settings = Settings.load(path)
    assert settings.video_codecs == ["h264", "vp9"] and settings.allow_uri_roots == ["/media"]
    assert settings.max_wait_ms == 2.5 and settings.share_prefix is False


def test_weaviate_values_point_at_the_qvl_service() -> None:
    """deploy/helm/weaviate-values.yaml is for Weaviate's own chart (not vendored here): its local
    module URLs name the Service the qvl chart makes for release `qvl` in namespace `qvl`, and the
    per-collection modules are on."""
    objs = render(*MINIMAL, release="qvl", namespace="qvl")
    svc = main_service(objs)
    http_port = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "http")
    want = f"http://{svc['metadata']['name']}.qvl.svc:{http_port}"
    modules = yaml.safe_load(WEAVIATE_VALUES.read_text())["modules"]
    urls = {name: m["inferenceUrl"] for name, m in modules.items() if "inferenceUrl" in m}
    assert urls and set(urls.values()) == {want}, urls
    assert all(modules[name]["enabled"] is False for name in urls), "enabled would deploy Weaviate's own container"
    for name in ("multi2vec-voyageai", "text2vec-openai", "reranker-cohere"):
        assert modules[name]["enabled"] is True and modules[name]["apiKey"]


def test_pods_run_restricted_with_a_read_only_root() -> None:
    """Pod Security Standards "restricted" (non-root, RuntimeDefault seccomp, no privilege escalation,
    every capability dropped) and a read-only root filesystem: qvl writes only where a volume is
    mounted (/tmp, HF_HOME for the checkpoints; the worker its liveness file under /tmp)."""
    objs = render(*FULL)
    for suffix in ("", "-worker"):
        pod = pod_of(objs, suffix)
        assert pod["securityContext"]["runAsNonRoot"] is True, suffix
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, suffix
        (container,) = pod["containers"]
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True, suffix
        assert sc["allowPrivilegeEscalation"] is False and not sc.get("privileged"), suffix
        assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add"), suffix
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert not any("hostPath" in v for v in volumes.values()), suffix
        writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")
                    and ("emptyDir" in volumes[m["name"]] or "persistentVolumeClaim" in volumes[m["name"]])}
        env = env_of(container)
        wanted = {"/tmp"} | ({env["HF_HOME"]} if suffix == "" else set())
        assert wanted <= writable, (suffix, writable)


def test_network_policy_admits_only_the_worker_and_named_clients() -> None:
    objs = render(*FULL, release="qvl", namespace="search")
    server_labels = server(objs)["spec"]["template"]["metadata"]["labels"]
    worker_labels = only(objs, "Deployment", "-worker")["spec"]["template"]["metadata"]["labels"]
    policy = policy_for(objs, server_labels)
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    here = {"namespace": "search", "release_ns": "search"}
    for port in (8080, 50051):
        assert admits(policy, port, labels=worker_labels, **here)
        assert admits(policy, port, labels={"qvl-client": "true"}, **here)  # the default client label
        assert not admits(policy, port, labels={"app": "anything"}, **here)
        assert not admits(policy, port, labels={"qvl-client": "true"}, namespace="other", release_ns="search")
    assert not admits(policy, 9090, labels=worker_labels, **here), "only qvl's two ports"

    # Who the clients are is configurable: Weaviate's pods in their own namespace, say.
    weaviate = '[{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "weaviate"}}, ' \
               '"podSelector": {"matchLabels": {"app": "weaviate"}}}]'
    objs = render(*FULL, "--set-json", f"networkPolicy.clients={weaviate}", release="qvl", namespace="search")
    policy = policy_for(objs, server_labels)
    assert admits(policy, 8080, labels={"app": "weaviate"}, namespace="weaviate", release_ns="search")
    assert not admits(policy, 8080, labels={"app": "other"}, namespace="weaviate", release_ns="search")
    assert not admits(policy, 8080, labels={"qvl-client": "true"}, **here)
    assert admits(policy, 50051, labels=worker_labels, **here)

    assert not [k for k in render(*MINIMAL, "--set", "networkPolicy.enabled=false") if k[0] == "NetworkPolicy"]


def egress(policy: dict[str, Any]) -> list[tuple[int, str, list[dict[str, Any]] | None]]:
    """(port, protocol, peers or None for anywhere) of every egress rule; a rule without ports fails."""
    out = []
    for rule in policy["spec"].get("egress") or []:
        assert rule.get("ports"), f"an egress rule open on every port: {rule}"
        out += [(p["port"], p.get("protocol", "TCP"), rule.get("to")) for p in rule["ports"]]
    return out


PRIVATE = {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10"}


def test_network_policy_egress_is_dns_the_model_download_and_the_worker_s_two_services() -> None:
    objs = render(*FULL, release="qvl", namespace="search")
    server_labels = server(objs)["spec"]["template"]["metadata"]["labels"]
    rules = egress(policy_for(objs, server_labels))
    assert {(port, proto) for port, proto, _ in rules} == {(53, "UDP"), (53, "TCP"), (443, "TCP")}
    # HTTPS to public addresses only (the Hugging Face hub and its CDN): never the cluster's own
    # ranges or the cloud metadata address (169.254.169.254).
    [(_, _, https)] = [r for r in rules if r[0] == 443]
    assert https is not None
    blocks = {b["ipBlock"]["cidr"]: set(b["ipBlock"].get("except") or []) for b in https}
    assert blocks["0.0.0.0/0"] >= PRIVATE, blocks
    # Checkpoints from a pre-filled claim: no download, no HTTPS.
    offline = render(*FULL, "--set", "networkPolicy.modelDownload=false", release="qvl", namespace="search")
    assert {p for p, _, _ in egress(policy_for(offline, server_labels))} == {53}

    worker_labels = only(objs, "Deployment", "-worker")["spec"]["template"]["metadata"]["labels"]
    worker_policy = policy_for(objs, worker_labels)
    assert set(worker_policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert not worker_policy["spec"].get("ingress"), "nothing calls the worker"
    rules = egress(worker_policy)
    [(_, _, to_qvl)] = [r for r in rules if r[0] == 50051]
    assert to_qvl is not None and [matches(p["podSelector"], server_labels) for p in to_qvl] == [True]
    assert 5432 in {p for p, _, _ in rules} and 443 not in {p for p, _, _ in rules}


def test_worker_tls_works_with_a_plain_tls_secret() -> None:
    """`kubectl create secret tls` and most issuers give tls.crt and tls.key only: a pod that mounts a
    key its Secret lacks never starts. The worker verifies the server against the system's CAs, or a
    CA from a Secret it is told about; it never mounts the server's private key."""
    objs = render(*FULL)
    for suffix in ("", "-worker"):
        for v in pod_of(objs, suffix).get("volumes") or []:
            if (v.get("secret") or {}).get("secretName") == "qvl-tls":
                keys = {i["key"] for i in v["secret"].get("items") or []}
                assert keys <= {"tls.crt", "tls.key"}, (suffix, keys)
    worker = pod_of(objs, "-worker")
    assert not [v for v in worker.get("volumes") or [] if (v.get("secret") or {}).get("secretName") == "qvl-tls"]
    (w,) = worker["containers"]
    assert env_of(w)["QVL_SERVICE_TLS"] == "true" and "QVL_SERVICE_CA_FILE" not in env_of(w)

    # A private CA (cert-manager puts ca.crt in its Secrets; or a Secret of its own).
    objs = render(*FULL, "--set", "tls.caSecretName=qvl-ca")
    worker = pod_of(objs, "-worker")
    (w,) = worker["containers"]
    [ca] = [v for v in worker["volumes"] if (v.get("secret") or {}).get("secretName") == "qvl-ca"]
    assert ca["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
    [mount] = [m for m in w["volumeMounts"] if m["name"] == ca["name"]]
    assert env_of(w)["QVL_SERVICE_CA_FILE"] == f"{mount['mountPath']}/ca.crt" and mount["readOnly"] is True


def test_worker_liveness_probe_reads_the_file_the_worker_touches(tmp_path: Path) -> None:
    """The worker touches QVL_WORKER_ALIVE_FILE while its loops turn (tests/integration/postgres/
    test_worker_alive.py); the probe, run here as the kubelet would, passes on a fresh file only."""
    objs = render(*MINIMAL, "--set", "worker.enabled=true", "--set", "worker.dsnSecret=app-db")
    pod = pod_of(objs, "-worker")
    (w,) = pod["containers"]
    path = env_of(w)["QVL_WORKER_ALIVE_FILE"]
    mounts = {m["mountPath"] for m in w["volumeMounts"] if not m.get("readOnly")}
    assert any(path.startswith(m.rstrip("/") + "/") for m in mounts), "the file must be on a writable volume"
    probe = w["livenessProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 60
    local = tmp_path / "alive"
    command = [sys.executable if part == "python" else part.replace(path, str(local))
               for part in probe["exec"]["command"]]

    def probe_passes() -> bool:
        return subprocess.run(command, capture_output=True, timeout=30).returncode == 0

    assert not probe_passes(), "no file yet: not alive"
    local.touch()
    assert probe_passes()
    os.utime(local, (time.time() - 3600, time.time() - 3600))
    assert not probe_passes(), "untouched for an hour: not alive"


def test_qvl_values_for_weaviate_admit_weaviate_s_pods() -> None:
    """deploy/helm/qvl-values-weaviate.yaml (named in weaviate-values.yaml) lets Weaviate's pods (its
    chart labels them app=weaviate) in namespace weaviate through qvl's NetworkPolicy."""
    values = ROOT / "deploy" / "helm" / "qvl-values-weaviate.yaml"
    assert values.name in WEAVIATE_VALUES.read_text()
    objs = render("-f", str(values), release="qvl", namespace="qvl")
    policy = policy_for(objs, server(objs)["spec"]["template"]["metadata"]["labels"])
    weaviate_pod = {"app": "weaviate", "app.kubernetes.io/name": "weaviate"}
    assert admits(policy, 8080, labels=weaviate_pod, namespace="weaviate", release_ns="qvl")
    assert not admits(policy, 8080, labels={"app": "other"}, namespace="weaviate", release_ns="qvl")


def test_the_documented_image_build_matches_the_dockerfile_and_the_chart() -> None:
    """docs/weaviate.md says how to build and push the image the chart names: its build argument is
    the Dockerfile's, its CUDA index is the GPU compose file's, its tag the chart's appVersion."""
    doc = (ROOT / "docs" / "weaviate.md").read_text(encoding="utf-8")
    build = re.search(r"docker build -f (\S+) --build-arg (\w+)=(\S+) \\\n\s+-t ([\w./-]+):(\S+) \.", doc)
    assert build, "the docker build command of the Helm section"
    dockerfile, arg, index, repository, tag = build.groups()
    assert f"ARG {arg}=" in (ROOT / dockerfile).read_text(encoding="utf-8")
    gpu = yaml.safe_load((ROOT / "docker-compose.gpu.yml").read_text(encoding="utf-8"))
    assert gpu["services"]["qvl-a"]["build"]["args"][arg] == index
    assert tag == yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))["appVersion"]
    assert f"docker push {repository}:{tag}" in doc and f"--set image.repository={repository}" in doc
    image = only(render(*MINIMAL, "--set", f"image.repository={repository}"), "Deployment", "-qvl")
    assert image["spec"]["template"]["spec"]["containers"][0]["image"] == f"{repository}:{tag}"
