"""qvl stopped and restarted in the middle of an ingestion through Weaviate's modules."""

from __future__ import annotations

import pytest
import weaviate

from connectors.weaviate.collections import create_collection
from tests.integration.weaviate.conftest import b64
from tests.support.service import ServiceProcess

pytestmark = [pytest.mark.weaviate, pytest.mark.service, pytest.mark.slow, pytest.mark.lifecycle]


def test_qvl_down_mid_ingestion(wv: weaviate.WeaviateClient, qvl_service: ServiceProcess,
                                pictures: list[dict[str, object]]) -> None:
    create_collection(wv, "Outage", module="multi2vec-clip", text_fields=["caption"], image_fields=["image"],
                      service_url=qvl_service.http_url, replace=True)
    col = wv.collections.get("Outage")
    objects = [{"caption": p["caption"], "image": b64(p["image"])} for p in pictures]
    try:
        first = col.data.insert_many(objects[:2])
        assert not first.has_errors, first.errors

        qvl_service.stop()
        try:
            # One object: the insert fails and says which module could not reach what.
            with pytest.raises(weaviate.exceptions.WeaviateBaseError) as single:
                col.data.insert(objects[2])
            message = str(single.value)
            assert "send POST request" in message and "connection refused" in message, message
            assert qvl_service.http_url.removeprefix("http://") in message, message
            # A batch: every object fails with the same clear reason; nothing is stored.
            with pytest.raises(weaviate.exceptions.WeaviateInsertManyAllFailedError,
                               match="connection refused"):
                col.data.insert_many(objects[2:4])
            assert len(col) == 2
        finally:
            qvl_service.start()

        # The service is back on the same address: the failed objects and the rest go in.
        again = col.data.insert_many(objects[2:])
        assert not again.has_errors, again.errors
        assert len(col) == len(objects)
    finally:
        wv.collections.delete("Outage")
