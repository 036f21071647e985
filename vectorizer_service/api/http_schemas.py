"""Request bodies of the HTTP API, as pydantic models (validation and the OpenAPI document)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VectorizeBody(BaseModel):
    """multi2vec-clip / multi2vec-bind: base64 media, one vector per input, input order."""

    model_config = ConfigDict(extra="ignore")
    texts: list[str] = Field(default_factory=list)
    images: list[str] = Field(default_factory=list)
    video: list[str] = Field(default_factory=list)
    audio: list[str] = Field(default_factory=list)
    imu: list[str] = Field(default_factory=list)
    thermal: list[str] = Field(default_factory=list)
    depth: list[str] = Field(default_factory=list)


class VectorsConfig(BaseModel):
    model_config = ConfigDict(extra="allow")
    pooling_strategy: str | None = None
    task_type: Literal["query", "passage"] | None = None
    dimensions: int | None = None


class VectorsBody(BaseModel):
    """text2vec-transformers."""

    model_config = ConfigDict(extra="allow")
    text: str
    config: VectorsConfig = Field(default_factory=VectorsConfig)


class RerankModuleBody(BaseModel):
    """reranker-transformers: a document that is a base64 image is scored as an image."""

    model_config = ConfigDict(extra="allow")
    query: str
    documents: list[str]
    property: str | None = None


class EmbedBody(Strict):
    items: list[Any] = Field(description="items: objects with text/image/video/frames/image_uri/video_uri/"
                             "document/document_uri/page/start_s/end_s/instruction, or plain strings")
    dimensions: int | None = None
    encoding: Literal["float32", "float16", "int8", "binary"] = "float32"
    normalize: bool = True
    instruction: str | None = None
    format: Literal["json", "base64"] = "json"
    allow_partial: bool = False
    truncate: Literal["none", "start", "end"] = Field(
        "end", description="past QVL_EMBED_MAX_LENGTH: refuse the item (none) or cut its text at the start or "
                           "the end; the answer's `truncated` names the cut items")
    chunking: dict[str, Any] | None = Field(
        None, description='{"type": "pages"}, {"type": "video", "seconds": 10, "overlap": 0} or '
                          '{"type": "text", "tokens": 512, "overlap": 64}: answers "chunks" per item')
    fingerprint: str | None = Field(None, description="refuse (409) unless the embedding model has this fingerprint")


class RerankBody(Strict):
    query: Any
    documents: list[Any]
    instruction: str | None = None
    top_k: int | None = Field(None, ge=1)
    allow_partial: bool = False


def request_doc(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI for a route that reads its body itself (whatever the Content-Type)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}
