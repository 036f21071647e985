"""One qvl service (with profiles) and one Weaviate wired to it, shared by this package's tests."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import weaviate
import yaml

from connectors.client import Client
from qvl_devtools.launchers.weaviate import WeaviateServer, connect, module_env
from tests.support.service import ServiceProcess

FIXTURES = Path(__file__).parents[2] / "fixtures"
DOCS_TOKEN = "weaviate-docs-token"
PROFILES = {
    "small": {
        "instruction": "Represent this photo for search",
        "query_instruction": "Find photos that match the words",
        "rerank_instruction": "Judge whether the photo shows what the words say",
        "dimensions": 32,
    },
}
IMAGES = ("rings_256x256.png", "stripes_320x240.png", "grid_200x400.png", "tall_96x480.png",
          "wide_640x160.jpg", "small_48x40.png")
CAPTIONS = ("concentric rings", "horizontal stripes", "a square grid", "a tall narrow picture",
            "a wide panorama", "a tiny thumbnail")


@pytest.fixture(scope="session")
def qvl_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    settings = tmp_path_factory.mktemp("qvl-settings") / "settings.yaml"
    settings.write_text(yaml.safe_dump({"profiles": PROFILES}))
    with ServiceProcess(args=["--settings", str(settings)]) as svc:
        yield svc


@pytest.fixture(scope="session")
def token_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """A second service, behind ``DOCS_TOKEN``: what docs/weaviate.md's collections name as qvl, with
    the docs' "products" profile (create_collection checks the service has the profile it pins)."""
    settings = tmp_path_factory.mktemp("qvl-docs-settings") / "settings.yaml"
    settings.write_text(yaml.safe_dump({"profiles": {"products": {**PROFILES["small"], "dimensions": 48}}}))
    with ServiceProcess(token=DOCS_TOKEN, args=["--settings", str(settings)]) as svc:
        yield svc


@pytest.fixture(scope="session")
def module_weaviate(qvl_service: ServiceProcess) -> Iterator[WeaviateServer]:
    with WeaviateServer(env=module_env(qvl_service.http_url)) as server:
        yield server


@pytest.fixture(scope="session")
def wv(module_weaviate: WeaviateServer) -> Iterator[weaviate.WeaviateClient]:
    client = connect(module_weaviate)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def qvl(qvl_service: ServiceProcess) -> Iterator[Client]:
    with Client(qvl_service.grpc_target) as client:
        yield client


@pytest.fixture(scope="session")
def images() -> dict[str, bytes]:
    return {name: (FIXTURES / "media" / name).read_bytes() for name in IMAGES}


@pytest.fixture(scope="session")
def pictures(images: dict[str, bytes]) -> list[dict[str, object]]:
    """Objects with a caption, an image (bytes) and a name."""
    return [{"name": name, "caption": caption, "image": images[name]}
            for name, caption in zip(IMAGES, CAPTIONS, strict=True)]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def cos(a: object, b: object) -> float:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))
