"""Modules without a per-collection URL (bind, reranker) take a profile through Weaviate's
environment: ``BIND_INFERENCE_API=http://qvl:8080/profiles/NAME``. Weaviate then checks
``/profiles/NAME/.well-known/ready`` and reads ``/profiles/NAME/meta`` at start-up."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import weaviate
from weaviate.classes.query import MetadataQuery, Rerank

from connectors.client import Client
from connectors.weaviate.collections import MODULE_VECTOR, create_collection, service_path
from qvl_devtools.launchers.weaviate import WeaviateServer, connect, module_env
from tests.integration.weaviate.conftest import PROFILES, b64, cos
from tests.media_factory import video_bytes
from tests.support.service import ServiceProcess

pytestmark = [pytest.mark.weaviate, pytest.mark.service, pytest.mark.slow, pytest.mark.lifecycle]


@pytest.fixture(scope="module")
def profiled(qvl_service: ServiceProcess) -> Iterator[weaviate.WeaviateClient]:
    small = service_path(qvl_service.http_url, profile="small")
    env = module_env(qvl_service.http_url) | {"BIND_INFERENCE_API": small, "RERANKER_INFERENCE_API": small}
    with WeaviateServer(env=env) as server:
        client = connect(server)
        try:
            yield client
        finally:
            client.close()


def test_profile_through_the_environment(profiled: weaviate.WeaviateClient, qvl_service: ServiceProcess,
                                         qvl: Client) -> None:
    profile = PROFILES["small"]
    create_collection(profiled, "ProfiledClips", module="multi2vec-bind", text_fields=["title"], video_fields=["clip"],
                      service_url=qvl_service.http_url, replace=True)
    col = profiled.collections.get("ProfiledClips")
    video = video_bytes(frames=4, fps=2, size=(96, 64), seed=7)
    titles = ["a short clip", "waves on a beach", "a city at night"]
    try:
        result = col.data.insert_many([{"title": t} for t in titles[1:]] + [{"clip": b64(video)}])
        assert not result.has_errors, result.errors
        obj = col.query.fetch_object_by_id(result.uuids[2], include_vector=True)
        got = np.asarray(obj.vector[MODULE_VECTOR])
        [want] = qvl.embed([{"video": video}], instruction=profile["instruction"], dimensions=profile["dimensions"])
        assert got.shape == (profile["dimensions"],)
        assert cos(got, want) >= 0.998

        found = col.query.near_text(query=titles[0], limit=3, target_vector=MODULE_VECTOR,
                                    rerank=Rerank(prop="title", query=titles[0]),
                                    return_metadata=MetadataQuery(distance=True))
        docs = [o.properties.get("title") or "" for o in found.objects]
        scores = [o.metadata.rerank_score for o in found.objects]
        want_scores = qvl.rerank(titles[0], docs, instruction=profile["rerank_instruction"]).scores.tolist()
        assert scores == pytest.approx(want_scores, abs=1e-4)
        assert scores != pytest.approx(qvl.rerank(titles[0], docs).scores.tolist(), abs=1e-4)
    finally:
        profiled.collections.delete("ProfiledClips")
