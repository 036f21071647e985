"""`qvl embed --chunk` and the parts of a source in the JSON lines of `qvl embed` / `qvl rerank`
(issue 21), on the tiny checkpoint: in this process (``run_qvl``), and as a real process for a bad
``--chunk`` spec."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.document_factory import pdf_of, pictures, video_of
from tests.support.cli import run_qvl

TINY = str(Path(__file__).parents[1] / "fixtures" / "tiny-qwen3-vl")
TEXT = " ".join(f"Sentence {i} of a long article about harbours and the ships that visit them." for i in range(60))


def qvl(*args: str, stdin: bytes, cwd: Path) -> list[dict]:
    proc = run_qvl(*args, stdin=stdin, cwd=cwd)  # a subprocess would import torch again for each call
    assert proc.returncode in (0, 1), proc.stderr.decode()[-2000:]
    return [json.loads(line) for line in proc.stdout.decode().splitlines()]


def lines(*objs: object) -> bytes:
    return "".join(json.dumps(o) + "\n" for o in objs).encode()


def test_embed_chunk_pages_video_and_text_match_their_parts_sent_alone(tmp_path: Path) -> None:
    (tmp_path / "manual.pdf").write_bytes(pdf_of(pictures(3, seed=2)))
    (tmp_path / "talk.mp4").write_bytes(video_of(pictures(3, seed=3), fps=2, repeat=4))  # 6 s
    [pages] = qvl("embed", "-m", TINY, "--chunk", "pages", stdin=lines({"document": "manual.pdf"}), cwd=tmp_path)
    assert [c["locator"] for c in pages["chunks"]] == [{"page": 1}, {"page": 2}, {"page": 3}]
    alone = qvl("embed", "-m", TINY, stdin=lines(*({"document": "manual.pdf", "page": n} for n in (1, 2, 3))),
                cwd=tmp_path)
    for chunk, one in zip(pages["chunks"], alone, strict=True):
        assert float(np.dot(chunk["embedding"], one["embedding"])) >= 0.9999

    [clips, bad] = qvl("embed", "-m", TINY, "--chunk", "video:4:1",
                       stdin=lines({"video": "talk.mp4"}, {"text": "no video here"}), cwd=tmp_path)
    assert [c["locator"] for c in clips["chunks"]] == [{"start_s": 0.0, "end_s": 4.0}, {"start_s": 3.0, "end_s": 6.0}]
    assert bad["line"] == 2 and "splits one video" in bad["error"]
    alone = qvl("embed", "-m", TINY, stdin=lines({"video": "talk.mp4", "start_s": 3, "end_s": 6}), cwd=tmp_path)
    assert float(np.dot(clips["chunks"][1]["embedding"], alone[0]["embedding"])) >= 0.998

    [passages] = qvl("embed", "-m", TINY, "--chunk", "text:64:8", stdin=lines({"text": TEXT}), cwd=tmp_path)
    spans = [(c["locator"]["char_start"], c["locator"]["char_end"]) for c in passages["chunks"]]
    assert len(spans) > 3
    alone = qvl("embed", "-m", TINY, stdin=lines(*(TEXT[s:e] for s, e in spans)), cwd=tmp_path)
    for chunk, one in zip(passages["chunks"], alone, strict=True):
        assert float(np.dot(chunk["embedding"], one["embedding"])) >= 0.9999


def test_a_bad_chunk_spec_is_refused_before_loading(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "qvl_cli", "embed", "-m", TINY, "--chunk", "video:ten"],
                          input=b"", capture_output=True, timeout=120)
    assert proc.returncode == 2 and b"--chunk 'video:ten'" in proc.stderr


def test_rerank_lines_take_pages_and_clips_as_documents(tmp_path: Path) -> None:
    (tmp_path / "manual.pdf").write_bytes(pdf_of(pictures(2, seed=4)))
    (tmp_path / "talk.mp4").write_bytes(video_of(pictures(2, seed=5), fps=2, repeat=2))
    docs = [{"document": "manual.pdf", "page": 2}, {"video": "talk.mp4", "start_s": 1, "end_s": 2}, "text"]
    [out] = qvl("rerank", "-m", TINY, stdin=lines({"query": "a picture", "documents": docs}), cwd=tmp_path)
    assert len(out["scores"]) == 3 and "errors" not in out
