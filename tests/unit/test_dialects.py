"""The dialects' translation rules, without a service: media references, query vs document, the
/v1/rerank body rule, embedding types, error shapes by path."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from vectorizer_service.api.dialects.content import item_from_parts, media_reference, string_item
from vectorizer_service.api.dialects.errors import FieldError, openai_shape, shape_for_path
from vectorizer_service.api.dialects.instructions import is_query_input_type, is_query_task
from vectorizer_service.api.dialects.output import dtype_values, render
from vectorizer_service.api.dialects.rerank import is_foreign_body
from vectorizer_service.api.item_codecs import UriSource
from vectorizer_service.core.errors import InputError
from vectorizer_service.core.settings import Settings
from vectorizer_service.core.vector_encoding import encode_vector

PIXEL = base64.b64encode(b"\x89PNG\r\n\x1a\nrest").decode()


def test_strings_are_text_unless_they_are_media_data_uris() -> None:
    assert string_item("data: the quarterly numbers", "input").texts == ["data: the quarterly numbers"]
    assert string_item("a dog", "input").texts == ["a dog"]
    image = string_item("data:image/png;base64," + PIXEL, "input")
    assert image.images == [base64.b64decode(PIXEL)] and not image.texts
    assert string_item("data:video/mp4;base64,AAAA", "input").videos == [b"\x00\x00\x00"]
    with pytest.raises(InputError, match="text/plain, neither an image nor a video"):
        string_item("data:text/plain;base64,aGk=", "input")
    with pytest.raises(InputError, match="without ';base64'"):
        string_item("data:image/svg+xml,<svg/>", "input")


def test_media_references() -> None:
    assert media_reference("https://media.example.com/a.png", "image", "x") == UriSource(
        "https://media.example.com/a.png")
    assert media_reference(PIXEL, "image", "x", bare_base64=True) == base64.b64decode(PIXEL)
    with pytest.raises(InputError, match=r"data URI .* or an http"):
        media_reference(PIXEL, "image", "x")
    with pytest.raises(InputError, match="a data URI of a video, where an image is expected"):
        media_reference("data:video/mp4;base64,AAAA", "image", "x")
    with pytest.raises(InputError, match="not valid base64"):
        media_reference("data:image/png;base64,@@@", "image", "x")
    with pytest.raises(InputError, match="non-empty string"):
        media_reference(None, "image", "x")
    with pytest.raises(InputError, match="x is not a valid URL: Invalid IPv6 URL"):
        media_reference("http://[::1", "image", "x")


def test_content_parts_make_one_item() -> None:
    settings = Settings()
    item = item_from_parts([{"type": "text", "text": "cap"},
                            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + PIXEL}},
                            {"type": "image_url", "image_url": "https://m.example.com/b.png"},
                            {"type": "video_base64", "video_base64": "AAAA"}], "content", settings)
    assert item.texts == ["cap"] and len(item.images) == 2 and item.videos == [b"\x00\x00\x00"]
    with pytest.raises(InputError, match=r"content\[0\] has type 'audio'"):
        item_from_parts([{"type": "audio"}], "content", settings)
    with pytest.raises(InputError, match="non-empty list"):
        item_from_parts([], "content", settings)
    with pytest.raises(InputError, match=r"65 content parts \(content\) in one item, over the limit of 64") as err:
        item_from_parts([{"type": "audio"}] * 65, "content", settings)  # counted before any is read
    assert err.value.limit == "QVL_MAX_PARTS_PER_ITEM" and err.value.status == 413


@pytest.mark.parametrize(("value", "query"), [("query", True), ("search_query", True), ("document", False),
                                              ("passage", False), ("search_document", False), ("image", False),
                                              ("classification", False), ("clustering", False), (None, None)])
def test_input_types(value: str | None, query: bool | None) -> None:
    assert is_query_input_type(value) is query


def test_tasks_and_unknown_values() -> None:
    assert is_query_task("retrieval.query") is True and is_query_task("retrieval.passage") is False
    assert is_query_task("text-matching") is False and is_query_task(None) is None
    with pytest.raises(FieldError, match="input_type: unknown value 'questions'"):
        is_query_input_type("questions")
    with pytest.raises(FieldError, match="task: unknown task"):
        is_query_task("retrieval")


def test_the_v1_rerank_body_rule() -> None:
    assert not is_foreign_body({"query": "q", "documents": ["d"], "top_k": 2, "instruction": "i"})
    for key in ("model", "top_n", "return_documents", "rank_fields", "max_chunks_per_doc", "truncation"):
        assert is_foreign_body({"query": "q", "documents": ["d"], key: 1})
    assert not is_foreign_body(["not", "an", "object"])


def test_embedding_types() -> None:
    vec = encode_vector(np.array([0.5, -0.25, 0.0, 0.8, -0.1, 0.3, 0.2, -0.9, 0.4]))
    int8 = dtype_values(vec, "int8")
    assert int8.dtype == np.int8 and np.abs(int8).max() == 127
    assert (dtype_values(vec, "uint8") == int8.astype(int) + 128).all()
    ubinary = dtype_values(vec, "ubinary")
    assert (np.unpackbits(ubinary)[:9] == (vec.values > 0)).all() and ubinary.dtype == np.uint8
    assert (dtype_values(vec, "binary") == ubinary.astype(int) - 128).all()
    floats = np.frombuffer(base64.b64decode(render(vec, "float", True)), "<f4")  # type: ignore[arg-type]
    assert np.allclose(floats, vec.values)
    assert render(vec, "int8", False) == int8.tolist()


def test_error_shapes_follow_the_path() -> None:
    assert shape_for_path("/v1/embeddings") is openai_shape
    assert shape_for_path("/profiles/p/v1/embeddings") is openai_shape
    assert shape_for_path("/v1/embed") is None and shape_for_path("/v1/rerank") is None
    assert shape_for_path("/v1/rerank", before_body=True) is not None
    body = openai_shape("item 2: bad", InputError("bad", item=2), "INVALID_ARGUMENT")
    assert body["error"] == {"message": "item 2: bad", "type": "invalid_request_error", "param": "input[2]",
                             "code": "invalid_argument"}
    assert shape_for_path("/v2/embed")("m", InputError("m"), "X") == {"message": "m"}  # type: ignore[misc]
    assert shape_for_path("/v1/multimodalembeddings")("m", InputError("m"), "X") == {"detail": "m"}  # type: ignore[misc]
