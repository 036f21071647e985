"""What the service runs: models, sizes, limits, versions (gRPC Info, HTTP /v1/info and /meta)."""

from __future__ import annotations

from typing import Any

from google.protobuf.json_format import MessageToDict

from . import __version__
from .outputs import ENCODINGS
from .proto_gen.qvl.v1 import vectorizer_pb2 as pb
from .settings import Settings


def _model_info(info: dict[str, Any]) -> pb.ModelInfo:
    return pb.ModelInfo(**{k: v for k, v in info.items() if k != "text"})


def service_info(dispatcher: Any, settings: Settings) -> pb.InfoResponse:
    """From what the model process reported when it loaded (empty while it starts)."""
    models = [_model_info(dispatcher.models[task]) for task in ("embed", "rerank") if task in dispatcher.models]
    versions = dispatcher.link.info
    s = settings
    limits = pb.Limits(
        max_request_bytes=s.max_request_bytes, max_media_bytes=s.max_media_bytes,
        max_source_image_pixels=s.max_source_image_pixels, image_max_pixels=s.image_max_pixels,
        video_max_frames=s.video_max_frames, video_fps=s.video_fps, max_video_seconds=s.max_video_seconds,
        max_items_per_request=s.max_items_per_request, max_rerank_documents=s.max_rerank_documents,
        queue_max_items=s.queue_max_items, batch_tokens=s.batch_tokens, stream_max_in_flight=s.stream_max_in_flight,
        allow_uri_schemes=s.allow_uri_schemes,
    )
    return pb.InfoResponse(models=models, limits=limits, version=__version__,
                           transformers_version=versions.get("transformers_version", ""),
                           torch_version=versions.get("torch_version", ""),
                           encodings=list(ENCODINGS), profiles=sorted(s.profiles))


def info_dict(dispatcher: Any, settings: Settings) -> dict[str, Any]:
    return MessageToDict(service_info(dispatcher, settings), preserving_proto_field_name=True)
