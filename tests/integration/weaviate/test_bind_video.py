"""multi2vec-bind backed by qvl: a video collection, its stored vectors and nearVideo."""

from __future__ import annotations

import numpy as np
import pytest
import weaviate
from weaviate.classes.query import MetadataQuery, NearMediaType

from connectors.client import Client
from connectors.weaviate.collections import MODULE_VECTOR, create_collection
from tests.integration.weaviate.conftest import b64, cos
from tests.media_factory import video_bytes
from tests.support.service import ServiceProcess

pytestmark = [pytest.mark.weaviate, pytest.mark.service]


def test_video_collection_and_near_video(wv: weaviate.WeaviateClient, qvl_service: ServiceProcess,
                                         qvl: Client) -> None:
    videos = [video_bytes(frames=4, fps=2, size=(96, 64), seed=s) for s in range(4)]
    titles = ["first clip", "second clip"]
    info = create_collection(wv, "Clips", module="multi2vec-bind", text_fields=["title"], video_fields=["clip"],
                             service_url=qvl_service.http_url, replace=True)
    assert info["module"] == "multi2vec-bind"
    col = wv.collections.get("Clips")
    try:
        # Objects 2 and 3 have no title: their vectors are the videos' own.
        objects = [{"title": t, "clip": b64(v)} for t, v in zip(titles, videos[:2], strict=True)]
        objects += [{"clip": b64(v)} for v in videos[2:]]
        result = col.data.insert_many(objects)
        assert not result.has_errors, result.errors
        uuids = [str(result.uuids[i]) for i in range(len(objects))]

        video_vecs = qvl.embed([{"video": v} for v in videos])
        text_vecs = qvl.embed(titles[:2])
        for i, uuid in enumerate(uuids):
            obj = col.query.fetch_object_by_id(uuid, include_vector=True)
            got = np.asarray(obj.vector[MODULE_VECTOR])
            want = video_vecs[i] if i >= 2 else (text_vecs[i] + video_vecs[i]) / 2
            assert cos(got, want) >= 0.998, f"object {i}"  # DESIGN: video parity bound

        def near_video(video: bytes, limit: int) -> list[tuple[str, float]]:
            found = col.query.near_media(media=b64(video), media_type=NearMediaType.VIDEO, limit=limit,
                                         target_vector=MODULE_VECTOR, return_metadata=MetadataQuery(distance=True))
            return [(str(o.uuid), o.metadata.distance) for o in found.objects]

        for i in (2, 3):
            [(uuid, distance)] = near_video(videos[i], 1)
            assert uuid == uuids[i], f"video {i}"
            assert distance == pytest.approx(0.0, abs=1e-4)
    finally:
        wv.collections.delete("Clips")
