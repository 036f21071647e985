"""What the service runs: models, sizes, limits, versions (gRPC Info, HTTP /v1/info and /meta)."""

from __future__ import annotations

from typing import Any

import torch
import transformers
from google.protobuf.json_format import MessageToDict

from . import __version__
from .outputs import ENCODINGS
from .proto_gen.qvl.v1 import vectorizer_pb2 as pb
from .settings import Settings


def _model_info(task: str, model: Any, settings: Settings) -> pb.ModelInfo:
    ckpt = model.ckpt
    return pb.ModelInfo(
        task=task, name=ckpt.path, hidden_size=ckpt.hidden_size, max_length=model.pre.max_length,
        modalities=["text", "image", "video"], dtype=str(ckpt.dtype).replace("torch.", ""), device=str(ckpt.device),
        attention=ckpt.attention,
        default_instruction=settings.default_instruction if task == "embed" else settings.rerank_instruction,
        query_instruction=settings.query_instruction if task == "embed" else "",
    )


def service_info(batcher: Any, settings: Settings) -> pb.InfoResponse:
    models = []
    if batcher.embedder is not None:
        models.append(_model_info("embed", batcher.embedder, settings))
    if batcher.reranker is not None:
        models.append(_model_info("rerank", batcher.reranker, settings))
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
                           transformers_version=transformers.__version__, torch_version=torch.__version__,
                           encodings=list(ENCODINGS), profiles=sorted(s.profiles))


def info_dict(batcher: Any, settings: Settings) -> dict[str, Any]:
    return MessageToDict(service_info(batcher, settings), preserving_proto_field_name=True)
