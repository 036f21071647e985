"""The stand-in for the model process (tests/support/fake_model_link.py) is only worth its use if the
request side sees through it what it sees through the real one: the same text stage (token ids,
truncation, reserved tokens) and the same shape of answers, without torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np

from connectors.client import Client
from tests.support.fake_model_link import text_spec
from tests.support.inprocess_service import InProcessService
from tests.support.service import TINY
from vectorizer_service.core.items import Item
from vectorizer_service.core.pipe_messages import EmbedCall, RerankCall
from vectorizer_service.core.prompts import embedding_prompt, rerank_prompt
from vectorizer_service.core.settings import DEFAULT_EMBED_INSTRUCTION, DEFAULT_RERANK_INSTRUCTION
from vectorizer_service.core.text_encoding import TextEncoder, TextIds
from vectorizer_service.model.served_models import Models

ROOT = Path(__file__).parents[2]


def test_the_fakes_text_stage_is_the_real_processors(models: Models) -> None:
    assert models.embedder is not None and models.reranker is not None
    for real, max_length, setting in ((models.embedder.pre.text, 64, "QVL_EMBED_MAX_LENGTH"),
                                      (models.reranker.pre.text, 80, "QVL_RERANK_MAX_LENGTH")):
        real_spec = real.spec
        fake = TextEncoder(text_spec(TINY, max_length, setting))
        real = TextEncoder.from_dict({**real.to_dict(), "max_length": max_length})
        assert fake.spec.chat_template == real_spec.chat_template
        assert fake.spec.keep_ids == real_spec.keep_ids
        assert fake.spec.reserved_tokens == real_spec.reserved_tokens
        texts = ["hello", "Ünïcödé and émoji 🙂", "x " * 500, "<|im_start|> typed by a user", ""]
        prompts = [embedding_prompt(Item(texts=[t]), DEFAULT_EMBED_INSTRUCTION) for t in texts]
        prompts += [rerank_prompt(Item(texts=["a query"]), Item(texts=[t]), None, DEFAULT_RERANK_INSTRUCTION)
                    for t in texts]
        assert fake.encode_texts(prompts) == real.encode_texts(prompts)
        assert max(len(t.ids) for t in fake.encode_texts(prompts) if isinstance(t, TextIds)) == max_length
        for text in ("a <|image_pad|> b", "<|vision_start|>"):
            assert str(_refusal(fake, text)) == str(_refusal(real, text))


def _refusal(encoder: TextEncoder, text: str) -> Exception:
    try:
        encoder.check_texts([text])
    except Exception as exc:  # the refusal itself is compared
        return exc
    raise AssertionError(f"{text!r} was not refused")


def test_the_request_side_runs_on_the_fake_in_this_process() -> None:
    with InProcessService() as svc, Client(svc.grpc_target) as client:
        first = client.embed(["a caption", "another", {"image": b"not decoded by the fake"}])
        again = client.embed(["a caption"], dimensions=32)
        assert first.shape == (3, 64) and again.shape == (1, 32)
        np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, rtol=1e-5)
        assert abs(float(first[0] @ first[1])) < 0.9  # different input, different vector
        # The same text again: the same vector (truncated and renormalized to 32 by the request side).
        np.testing.assert_allclose(again[0], first[0, :32] / np.linalg.norm(first[0, :32]), rtol=1e-5)
        ranked = client.rerank("q", ["a", "b", "c"])
        assert len(ranked.scores) == 3 and all(0.0 < s < 1.0 for s in ranked.scores)
        assert list(client.rerank("q", ["a", "b", "c"]).scores) == list(ranked.scores)
        assert svc.link is not None
        embed_calls = [m for m in svc.link.sent if isinstance(m, EmbedCall)]
        # Text travels as token ids prepared by the request side; media raw, as to the real process.
        first_call = embed_calls[-2]
        assert [type(entry).__name__ for _, entry in first_call.entries] == ["list", "list", "Item"]
        assert any(isinstance(m, RerankCall) for m in svc.link.sent)
        info = httpx.get(svc.http_url + "/v1/info").json()
        assert [m["hidden_size"] for m in info["models"]] == [64, 64]
        items = [line for line in httpx.get(svc.http_url + "/metrics").text.splitlines()
                 if line.startswith('qvl_items_total{task="embed"}')]
        assert items and float(items[0].rsplit(" ", 1)[1]) >= 4


def test_the_fake_service_needs_no_torch() -> None:
    script = ("import sys\nfrom tests.support.inprocess_service import InProcessService\n"
              "from connectors.client import Client\n"
              "with InProcessService() as svc, Client(svc.grpc_target) as c:\n"
              "    print(c.embed(['x']).shape[1], 'torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.split()[0]) == 64 and done.stdout.split()[1] == "False", done.stdout
