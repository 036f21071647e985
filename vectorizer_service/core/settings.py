"""One settings object for every entry point: defaults < settings file < ``QVL_*`` env < CLI flags."""

from __future__ import annotations

import contextvars
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from vectorizer_service.core.errors import ConfigError

# Qwen3-VL's reference constants (factor 32 = patch 16 x spatial merge 2).
IMAGE_FACTOR = 32
DEFAULT_EMBED_INSTRUCTION = "Represent the user's input."
DEFAULT_QUERY_INSTRUCTION = "Retrieve images or text relevant to the user's query."
DEFAULT_RERANK_INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."

_settings_file: contextvars.ContextVar[Path | None] = contextvars.ContextVar("qvl_settings_file", default=None)


class Profile(BaseModel):
    """A named set of per-collection options, selectable through the URL (``/profiles/{name}/...``)."""

    instruction: str | None = None
    query_instruction: str | None = None
    rerank_instruction: str | None = None
    dimensions: int | None = None
    # The OpenAI-style /v1/embeddings route: strings with no input_type or task are queries (for
    # Weaviate's multi2vec-jinaai, which sends query texts as plain strings and objects as {text}).
    plain_strings_are_queries: bool = False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QVL_", extra="forbid", validate_default=True)

    # Models
    embedding_model: str | None = Field(None, description="Embedding checkpoint: directory or hub id")
    reranker_model: str | None = Field(None, description="Reranker checkpoint: directory or hub id")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="auto: bf16 CUDA, fp32 CPU")
    attention: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto", description="auto: flash_attention_2 on CUDA when installed, else sdpa")
    embed_max_length: int = Field(
        8192, ge=64, description="Embedding tokens per item (instruction and prompt included); past it the item "
                                 "is refused or its text cut, as the caller's truncate option says (docs/api.md)")
    rerank_max_length: int = Field(10240, ge=64, description="Reranker tokens per pair; longer text is cut")
    tiktoken_cache_dir: Path = Field(
        Path("/opt/qvl/tiktoken"),
        description="OpenAI's tiktoken files (tiktoken's cache layout; `make setup` puts cl100k_base here): token "
                    "arrays on /v1/embeddings are decoded with them. Nothing is downloaded")
    default_instruction: str = Field(DEFAULT_EMBED_INSTRUCTION, description="Embedding instruction of documents")
    query_instruction: str = Field(DEFAULT_QUERY_INSTRUCTION, description="Embedding instruction of queries")
    rerank_instruction: str = Field(DEFAULT_RERANK_INSTRUCTION, description="Reranker instruction")
    fingerprint_cache: str = Field(
        "auto", description="File keeping checkpoint file hashes between starts (by path, size, times, inode), so "
                            "a large checkpoint is hashed once: auto ($HF_HOME/qvl/fingerprints.json, else "
                            "~/.cache/qvl/fingerprints.json), a path, or off. Unwritable: hashed at every start")

    # Media: model-side sizes (the reference's), then hard limits checked before decoding.
    image_min_pixels: int = Field(4 * IMAGE_FACTOR * IMAGE_FACTOR, description="Images are resized up to this")
    image_max_pixels: int = Field(1800 * IMAGE_FACTOR * IMAGE_FACTOR, description="Images are resized down to this")
    video_fps: float = Field(1.0, gt=0, description="Frames sampled per second of video")
    video_max_frames: int = Field(64, ge=2, description="Most frames sampled from one video")
    video_total_pixels: int = Field(10 * 768 * IMAGE_FACTOR * IMAGE_FACTOR,
                                    description="Pixel budget of all sampled frames of a video")
    max_source_image_pixels: int = Field(64_000_000, description="Refuse larger images before decoding")
    max_video_seconds: float = Field(3600.0, description="Refuse longer videos before decoding")
    max_video_source_frames: int = Field(200_000, description="Refuse videos with more frames")
    max_video_frame_pixels: int = Field(33_177_600, description="Refuse videos with larger frames (8K)")
    max_media_bytes: int = Field(64 * 1024 * 1024, description="Largest single image or video")
    max_item_decoded_pixels: int = Field(
        268_435_456, ge=1, description="Pixels decoding one item may hold (its images and video frames at source size)")
    max_request_decoded_pixels: int = Field(
        4_294_967_296, ge=1, description="Pixels one request may decode in all; past it, items are refused (413)")
    video_codecs: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "gif"],
        description="Comma-separated FFmpeg decoders allowed for video files (others are refused before decoding)")
    # Documents (PDF pages) and parts of sources (docs/documents.md).
    document_dpi: float = Field(
        96.0, gt=0, le=600, description="Resolution PDF pages are drawn at; a page larger than QVL_IMAGE_MAX_PIXELS "
                                        "at it is drawn smaller, to fit")
    max_document_bytes: int = Field(64 * 1024 * 1024, ge=1, description="Largest PDF, refused before it is opened")
    max_document_pages: int = Field(1000, ge=1, description="Refuse PDFs with more pages (counted before rendering)")
    document_timeout_s: float = Field(
        60.0, gt=0, description="Rendering time one document's pages may take in one request (waits for the model "
                                "not counted); past it the renderer is killed and the document fails")
    render_workers: int = Field(2, ge=1, le=64, description="PDF renderer processes (no model in them)")
    renderer_memory_bytes: int = Field(
        2 * 1024 * 1024 * 1024, ge=256 * 1024 * 1024,
        description="Address space one renderer process may map (a PDF that needs more fails alone)")
    max_video_windows: int = Field(720, ge=1, description="Most windows one video is cut into by chunking")
    max_text_passages: int = Field(1024, ge=1, description="Most passages one text is cut into by chunking")
    max_images_per_item: int = Field(32, description="Most images in one item")
    max_videos_per_item: int = Field(4, description="Most videos in one item")
    max_text_chars: int = Field(200_000, description="Longest text part, in characters")
    max_parts_per_item: int = Field(
        64, ge=1, description="Most parts (texts, images, videos; a frame list is one video) in one item")
    max_items_per_request: int = Field(1024, description="Most items in one embed request")
    max_rerank_documents: int = Field(1000, description="Most documents in one rerank request")
    max_json_values: int = Field(
        100_000, ge=1, description="Most JSON values (list elements, object members) in one HTTP body, counted "
                                   "before it is parsed: parsed JSON takes about 60-100 bytes a value")
    max_json_depth: int = Field(32, ge=2, description="Deepest nesting of lists and objects in one HTTP body")

    # Batching
    batch_tokens: int = Field(16384, ge=256, description="Token budget of one model batch (padded)")
    max_batch_items: int = Field(64, ge=1, description="Most sequences in one model batch")
    batch_max_patches: int = Field(
        16384, ge=256, description="Most vision patches in one model batch (about 14 images of 640x480)")
    max_wait_ms: float = Field(5.0, ge=0, description="How long a batch waits for items still being prepared")
    min_wait_ms: float = Field(0.0, ge=0, description="How long every batch waits for company (latency floor)")
    queue_max_items: int = Field(2048, ge=1, description="Items in flight; more is refused at once")
    queue_max_bytes: int = Field(32 * 1024 * 1024, ge=1, description="Raw media bytes in flight; more is refused")
    prepared_max_bytes: int = Field(
        128 * 1024 * 1024, ge=1,
        description="Decoded pixel tensors waiting for the model; decoding pauses past it (raise it on GPUs)")
    torch_threads: int | None = Field(
        None, ge=1, description="CPU threads of the model (default: all cores but one, leaving one for requests)")
    gil_switch_ms: float = Field(
        0.5, gt=0,
        description="Thread switch interval of the model process: short, so decoding threads do not starve the model")
    share_prefix: bool = Field(True, description="Compute a prefix shared by a batch's rows once")
    preprocess_workers: int | None = Field(
        None, ge=1, description="Threads decoding media (default: cores up to 8; in the model process, beside the "
                                "model thread, one fewer)")
    request_timeout_s: float = Field(120.0, gt=0, description="Default deadline when the caller sets none")
    live_max_failing_batches: int = Field(
        8, ge=1, description="Batches in a row the model fails on every sequence before /live answers 503")

    # Serving
    host: str = Field("0.0.0.0", description="Bind address of both listeners")
    grpc_port: int = Field(50051, description="gRPC port")
    http_port: int = Field(8080, description="HTTP port")
    token: str | None = Field(None, description="Bearer token required on gRPC and HTTP when set")
    tls_cert: Path | None = Field(None, description="PEM certificate: gRPC and HTTP serve TLS (set with the key)")
    tls_key: Path | None = Field(None, description="PEM private key of the certificate")
    max_request_bytes: int = Field(128 * 1024 * 1024, description="Largest gRPC message / HTTP body")
    max_concurrent_rpcs: int = Field(
        256, ge=1, description="gRPC calls served at once; more are refused before their messages are read")
    drain_seconds: float = Field(30.0, ge=0, description="SIGTERM grace period for in-flight work")
    drain_notice_seconds: float = Field(
        1.0, ge=0, description="After SIGTERM, the ports stay open at least this long saying NOT_SERVING / 503 "
                               "(new calls refused, retryably), so clients and balancers turn away before they close")
    allow_uri_schemes: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated, e.g. file,https (none by default: no URI is read)")
    allow_uri_roots: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated file roots and URL roots (a URL matches a root's scheme, host, port and path)")
    uri_timeout_s: float = Field(10.0, gt=0, description="Deadline of one allowed http(s) fetch, start to end")
    allow_uri_private_addresses: bool = Field(
        False, description="Let allowed URLs resolve to private, loopback or link-local addresses")
    stream_max_in_flight: int = Field(256, ge=1, description="Items one EmbedStream reads ahead")
    max_wire_bytes: int = Field(
        512 * 1024 * 1024, ge=1,
        description="Request bytes held at once (HTTP bodies and what they parse into, gRPC messages, stream "
                    "read-ahead); past it 503 or RESOURCE_EXHAUSTED, streams wait")
    open_module_routes: bool = Field(False, description="Serve Weaviate's module routes without the token")
    warmup: bool = Field(True, description="Run one embedding and one rerank before reporting ready")
    profiles: dict[str, Profile] = Field(
        default_factory=dict, description="Named options for /profiles/{name}/... (settings file, or JSON)")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING, ERROR")
    log_format: Literal["json", "text"] = Field(
        "text", description="text, or json lines (`qvl --log-format` wins; the compose file sets json)")

    @field_validator("allow_uri_schemes", "allow_uri_roots", "video_codecs", mode="before")
    @classmethod
    def _split_csv(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _settings_file.get()
        if path is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)

    def decode_threads(self, *, beside_model: bool) -> int:
        """Decoding threads: all cores for a batch prepared before it is computed; one fewer where
        decoding overlaps the model thread (on 2 cores a second decoding thread only fights the
        model thread for the interpreter lock: measured 203 vs 161-175 items/s on image rows)."""
        if self.preprocess_workers is not None:
            return self.preprocess_workers
        cores = (os.cpu_count() or 1) - (1 if beside_model else 0)
        return max(1, min(8, cores))

    @model_validator(mode="after")
    def _whole_tls(self) -> Settings:
        # Half a TLS configuration must not quietly serve plaintext.
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("QVL_TLS_CERT and QVL_TLS_KEY go together: set both (TLS on gRPC and HTTP) or neither")
        for path in (self.tls_cert, self.tls_key):
            if path is not None and not path.is_file():
                raise ValueError(f"TLS file not found: {path}")
        return self

    @classmethod
    def load(cls, settings_file: str | Path | None = None, **overrides: Any) -> Settings:
        """Build settings; ``overrides`` (CLI flags) that are None are ignored. Bad settings raise
        ConfigError naming each setting and the reason."""
        path = settings_file or os.environ.get("QVL_SETTINGS_FILE")
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"settings file not found: {path}")
        token = _settings_file.set(Path(path) if path else None)
        try:
            return cls(**{k: v for k, v in overrides.items() if v is not None})
        except ValidationError as exc:
            problems = "; ".join(
                (f"QVL_{'_'.join(str(p) for p in e['loc']).upper()}: " if e["loc"] else "") + e["msg"].removeprefix(
                    "Value error, ") for e in exc.errors())
            raise ConfigError(f"bad settings: {problems}") from None
        finally:
            _settings_file.reset(token)


def settings_markdown() -> str:
    """The README's settings table (tests/unit/test_readme.py keeps the README equal to it)."""
    computed = {"preprocess_workers": "cores, up to 8 (model process: cores − 1)", "allow_uri_schemes": "(none)",
                "allow_uri_roots": "(none)", "video_codecs": "h264,hevc,vp8,vp9,av1,mpeg4,gif",
                "profiles": "{}"}
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = computed.get(name, "(unset)" if field.default is None else field.default)
        rows.append(f"| `QVL_{name.upper()}` | `{default}` | {field.description} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(settings_markdown())
