"""A stand-in for the model process, for tests of the request side that are not about the model.

``FakeModelLink`` has the surface of ``serving.model_process_link.ModelProcessLink`` (the
``serving.model_link.ModelLink`` protocol): the dispatcher, the gRPC and HTTP adapters, admission,
auth and health run for real in the test's process, while the model process is replaced by
answers computed from what was sent (infinity's dummy engine, in spirit). Nothing is decoded or
computed and torch is never imported: media is not checked, so a test about decoding, batching,
the model's vectors or the model process's life (start-up, crash, restart) needs the real service.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from vectorizer_service.core.errors import DeadlineError, UnavailableError
from vectorizer_service.core.pipe_messages import (
    BatchStats,
    EmbedCall,
    Ready,
    RerankCall,
    RowValue,
    ServedModel,
    ToModelProcess,
)
from vectorizer_service.core.settings import Settings
from vectorizer_service.core.text_encoding import TextSpec

# Qwen3-VL's vision placeholders (its processor's image_token, video_token, vision_start_token and
# vision_end_token): user text may not contain them.
QWEN3_VL_RESERVED = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")


def text_spec(checkpoint: str | Path, max_length: int, max_length_setting: str) -> TextSpec:
    """The text stage of a local Qwen3-VL checkpoint read from its files, without transformers'
    processor (which needs torch). tests/unit/test_fake_model_link.py holds it to the real one."""
    path = Path(checkpoint)
    tokenizer_json = (path / "tokenizer.json").read_text()
    template_file = path / "chat_template.jinja"
    template = template_file.read_text() if template_file.is_file() else \
        json.loads((path / "tokenizer_config.json").read_text())["chat_template"]
    special: dict[str, Any] = {}
    for key, value in json.loads((path / "special_tokens_map.json").read_text()).items():
        special[key] = [v["content"] if isinstance(v, dict) else v for v in value] if isinstance(value, list) \
            else value["content"] if isinstance(value, dict) else value
    added = json.loads(tokenizer_json)["added_tokens"]
    config = json.loads((path / "config.json").read_text())
    keep = {t["id"] for t in added if t.get("special")} | {config["image_token_id"], config["video_token_id"]}
    return TextSpec(chat_template=template, tokenizer_json=tokenizer_json, special_tokens=special,
                    keep_ids=sorted(keep), reserved_tokens=list(QWEN3_VL_RESERVED), max_length=max_length,
                    max_length_setting=max_length_setting)


def _digest(*parts: object) -> bytes:
    return hashlib.sha256(repr(parts).encode()).digest()


def fake_vector(entry: object, instruction: str | None, hidden_size: int) -> np.ndarray:
    """A pooled hidden state that depends only on what was sent (token ids or a raw item)."""
    seed = int.from_bytes(_digest(entry, instruction)[:8], "little")
    return np.random.default_rng(seed).standard_normal(hidden_size).astype(np.float32)


def fake_score(query: object, document: object, instruction: str | None) -> float:
    """A relevance score in (0, 1) that depends only on the pair and the instruction."""
    return (int.from_bytes(_digest(query, document, instruction)[:4], "little") + 1) / (2**32 + 2)


class FakeModelLink:
    """Answers the dispatcher's calls at once (on the next turn of the event loop) with
    deterministic vectors and scores; ``sent`` keeps every message it was given."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.on_stats: Callable[[BatchStats], None] = lambda stats: None
        self.info: Ready | None = None
        self.alive = False
        self.exited = asyncio.Event()
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future[list[RowValue | None]]] = {}
        self.sent: list[ToModelProcess] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.hidden_size: dict[str, int] = {}

    def _served(self, task: str, checkpoint: str) -> ServedModel:
        s = self.settings
        config = json.loads((Path(checkpoint) / "config.json").read_text())
        self.hidden_size[task] = int(config.get("text_config", config)["hidden_size"])
        if task == "embed":
            spec = text_spec(checkpoint, s.embed_max_length, "QVL_EMBED_MAX_LENGTH")
            default, query = s.default_instruction, s.query_instruction
        else:
            spec = text_spec(checkpoint, s.rerank_max_length, "QVL_RERANK_MAX_LENGTH")
            default, query = s.rerank_instruction, ""
        return ServedModel(task=task, name=checkpoint, hidden_size=self.hidden_size[task],
                           max_length=spec.max_length, modalities=["text", "image", "video"], dtype="float32",
                           device="cpu", attention="fake", default_instruction=default, query_instruction=query,
                           text=asdict(spec))

    async def start(self) -> Ready:
        self.loop = asyncio.get_running_loop()
        self.exited = asyncio.Event()
        models = {task: self._served(task, path) for task, path in
                  (("embed", self.settings.embedding_model), ("rerank", self.settings.reranker_model)) if path}
        self.info = Ready(models=models, torch_version="", transformers_version="", pid=os.getpid())
        self.alive = True
        return self.info

    async def stop(self, timeout: float = 30.0) -> None:
        self.alive = False

    def call(self, rows: int, expected: int,
             build: Callable[[int], ToModelProcess]) -> tuple[int, asyncio.Future[list[RowValue | None]]]:
        if not self.alive or self.loop is None:
            raise UnavailableError("the model process is not running (starting or restarting); retry shortly")
        rid = next(self.ids)
        message = build(rid)
        self.sent.append(message)
        future: asyncio.Future[list[RowValue | None]] = self.loop.create_future()
        self.pending[rid] = future
        self.loop.call_soon(self._answer, rid, message, rows)
        return rid, future

    def cancel(self, rid: int) -> None:
        self.pending.pop(rid, None)

    def _answer(self, rid: int, message: ToModelProcess, rows: int) -> None:
        future = self.pending.pop(rid, None)
        if future is None or future.done():
            return  # cancelled meanwhile
        out: list[RowValue | None] = [None] * rows
        if isinstance(message, EmbedCall):
            task, count = "embed", len(message.entries)
            for index, entry in message.entries:
                out[index] = fake_vector(entry, message.instruction, self.hidden_size[task])
        elif isinstance(message, RerankCall):
            task, count = "rerank", len(message.documents)
            for index, document in enumerate(message.documents):
                out[index] = fake_score(message.query, document, message.instruction)
        else:
            raise TypeError(f"the model process takes no calls of {type(message).__name__}")
        if time.monotonic() > message.deadline:  # as the model process: dropped before compute
            self.on_stats(BatchStats(task=task, depth={task: 0}, prepared_bytes=0, dropped={"deadline": count}))
            future.set_exception(DeadlineError("the deadline passed before compute"))
            return
        self.on_stats(BatchStats(task=task, depth={task: 0}, prepared_bytes=0, size=count, seconds=0.0))
        future.set_result(out)
