"""text2vec-transformers backed by qvl: passages and queries get different instructions."""

from __future__ import annotations

import numpy as np
import pytest
import weaviate
from weaviate.classes.query import MetadataQuery

from connectors.client import Client
from connectors.weaviate.collections import MODULE_VECTOR, create_collection
from tests.integration.weaviate.conftest import PROFILES, cos
from tests.support.service import ServiceProcess

pytestmark = [pytest.mark.weaviate, pytest.mark.service]

NOTES = ["the cat sleeps on the warm windowsill", "stock prices fell sharply on monday",
         "a recipe for bread with a crisp crust", "the river floods every spring"]
QUERY = "where do cats like to nap"


def _passage_and_query_instructions(qvl: Client) -> tuple[str, str]:
    [embed] = [m for m in qvl.info().models if m.task == "embed"]
    return embed.default_instruction, embed.query_instruction


def _stored(wv: weaviate.WeaviateClient, name: str) -> dict[str, np.ndarray]:
    col = wv.collections.get(name)
    return {o.properties["body"]: np.asarray(o.vector[MODULE_VECTOR])
            for o in col.iterator(include_vector=True)}


def test_passages_and_query_instruction(wv: weaviate.WeaviateClient, qvl_service: ServiceProcess,
                                        qvl: Client) -> None:
    passage_instruction, query_instruction = _passage_and_query_instructions(qvl)
    assert passage_instruction != query_instruction
    info = create_collection(wv, "Notes", module="text2vec-transformers",
                             text_fields=["body"], service_url=qvl_service.http_url, replace=True)
    assert info["module"] == "text2vec-transformers"
    col = wv.collections.get("Notes")
    try:
        result = col.data.insert_many([{"body": n} for n in NOTES])
        assert not result.has_errors, result.errors
        stored = _stored(wv, "Notes")
        expected = qvl.embed(NOTES)  # the service's default (passage) instruction
        for note, want in zip(NOTES, expected, strict=True):
            assert cos(stored[note], want) >= 0.9999, note

        found = col.query.near_text(query=QUERY, limit=len(NOTES), target_vector=MODULE_VECTOR,
                                    return_metadata=MetadataQuery(distance=True))
        [as_query] = qvl.embed([QUERY], instruction=query_instruction)
        [as_passage] = qvl.embed([QUERY])
        gaps = []
        for obj in found.objects:
            vec = stored[obj.properties["body"]]
            assert obj.metadata.distance == pytest.approx(1 - cos(as_query, vec), abs=1e-4)
            gaps.append(abs(obj.metadata.distance - (1 - cos(as_passage, vec))))
        assert max(gaps) > 1e-3  # the query instruction really changed the distances
    finally:
        wv.collections.delete("Notes")


def test_profile_and_module_dimensions(wv: weaviate.WeaviateClient, qvl_service: ServiceProcess,
                                       qvl: Client) -> None:
    profile = PROFILES["small"]
    create_collection(wv, "NotesProfile", module="text2vec-transformers",
                      text_fields=["body"], service_url=qvl_service.http_url,
                      profile="small", replace=True)
    # dimensions without a profile travel in the module's own config (task config "dimensions").
    create_collection(wv, "NotesDim", module="text2vec-transformers",
                      text_fields=["body"], service_url=qvl_service.http_url, dimensions=40,
                      replace=True)
    try:
        for name in ("NotesProfile", "NotesDim"):
            result = wv.collections.get(name).data.insert_many([{"body": n} for n in NOTES[:2]])
            assert not result.has_errors, result.errors
        stored = _stored(wv, "NotesProfile")
        want = qvl.embed(NOTES[:2], instruction=profile["instruction"], dimensions=profile["dimensions"])
        for note, w in zip(NOTES[:2], want, strict=True):
            assert stored[note].shape == (profile["dimensions"],)
            assert cos(stored[note], w) >= 0.9999

        found = wv.collections.get("NotesProfile").query.near_text(
            query=QUERY, limit=2, target_vector=MODULE_VECTOR, return_metadata=MetadataQuery(distance=True))
        [q] = qvl.embed([QUERY], instruction=profile["query_instruction"], dimensions=profile["dimensions"])
        for obj in found.objects:
            assert obj.metadata.distance == pytest.approx(1 - cos(q, stored[obj.properties["body"]]), abs=1e-4)

        stored = _stored(wv, "NotesDim")
        want = qvl.embed(NOTES[:2], dimensions=40)
        for note, w in zip(NOTES[:2], want, strict=True):
            assert stored[note].shape == (40,)
            assert cos(stored[note], w) >= 0.9999
    finally:
        wv.collections.delete("NotesProfile")
        wv.collections.delete("NotesDim")
