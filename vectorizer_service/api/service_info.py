"""What the service runs: models, sizes, limits, versions (gRPC Info, HTTP /v1/info and /meta)."""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from qvl_proto import vectorizer_pb2 as pb
from vectorizer_service import __version__
from vectorizer_service.core.model_identity import public_model_name as public_model_name
from vectorizer_service.core.settings import Settings
from vectorizer_service.core.vector_encoding import ENCODINGS
from vectorizer_service.serving.dispatcher import Dispatcher


def _model_info(model: Any) -> pb.ModelInfo:
    fields = model.model_info()
    return pb.ModelInfo(**{**fields, "name": public_model_name(fields["name"])})


def service_info(dispatcher: Dispatcher, settings: Settings) -> pb.InfoResponse:
    """From what the model process reported when it loaded (empty while it starts)."""
    models = [_model_info(dispatcher.models[task]) for task in ("embed", "rerank") if task in dispatcher.models]
    ready = dispatcher.link.info
    s = settings
    limits = pb.Limits(
        max_request_bytes=s.max_request_bytes, max_media_bytes=s.max_media_bytes,
        max_source_image_pixels=s.max_source_image_pixels, image_max_pixels=s.image_max_pixels,
        video_max_frames=s.video_max_frames, video_fps=s.video_fps, max_video_seconds=s.max_video_seconds,
        max_items_per_request=s.max_items_per_request, max_rerank_documents=s.max_rerank_documents,
        queue_max_items=s.queue_max_items, batch_tokens=s.batch_tokens, stream_max_in_flight=s.stream_max_in_flight,
        allow_uri_schemes=s.allow_uri_schemes, max_document_bytes=s.max_document_bytes,
        max_document_pages=s.max_document_pages, max_video_windows=s.max_video_windows,
    )
    return pb.InfoResponse(models=models, limits=limits, version=__version__,
                           transformers_version=ready.transformers_version if ready else "",
                           torch_version=ready.torch_version if ready else "",
                           encodings=list(ENCODINGS), profiles=sorted(s.profiles),
                           profile_fingerprints=dispatcher.profile_fingerprints)


_INT64 = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
          FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64}


def _numbers(message: Message, out: dict[str, Any]) -> dict[str, Any]:
    """64-bit integers back to JSON numbers: protobuf's JSON mapping writes them as strings (for
    JavaScript), which left ``/v1/info`` with some limits strings and others numbers."""
    for field, value in message.ListFields():
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                continue  # a map (profile fingerprints): strings only
            if field.label == FieldDescriptor.LABEL_REPEATED:
                for sub, sub_out in zip(value, out[field.name], strict=True):
                    _numbers(sub, sub_out)
            else:
                _numbers(value, out[field.name])
        elif field.type in _INT64:
            out[field.name] = list(value) if field.label == FieldDescriptor.LABEL_REPEATED else int(value)
    return out


def info_dict(dispatcher: Dispatcher, settings: Settings) -> dict[str, Any]:
    info = service_info(dispatcher, settings)
    return _numbers(info, MessageToDict(info, preserving_proto_field_name=True))
