"""The `qvl` command: in this process (``run_qvl``), and as a real process (``qvl``) once per command family."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.support.cli import Ran, run_qvl

FIXTURES = Path(__file__).parents[1] / "fixtures"
TINY = str(FIXTURES / "tiny-qwen3-vl")


def qvl(*args: str, stdin: bytes = b"", cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "qvl_cli", *args], input=stdin,
                          capture_output=True, cwd=cwd, timeout=300)


def test_embed_lines_in_order_with_a_bad_line(tmp_path: Path) -> None:
    lines = [
        {"text": "A woman playing with her dog on a beach at sunset."},
        {"image": "media/rings_256x256.png", "text": "concentric rings"},
        {"image": "media/missing.png"},
        {"video": [f"media/clipA/frame_{i:03d}.png" for i in range(8)]},
    ]
    data = b"\n".join(json.dumps(x).encode() for x in lines) + b"\n{not json\n" + b'{"text": "\xff\xfe"}\n'
    proc = qvl("embed", "--model", TINY, "--dimensions", "32", stdin=data, cwd=FIXTURES)
    assert proc.returncode == 1, proc.stderr
    out = [json.loads(x) for x in proc.stdout.decode().splitlines()]
    assert len(out) == 6
    assert len(out[0]["embedding"]) == 32 and abs(np.linalg.norm(out[0]["embedding"]) - 1) < 1e-4
    assert "embedding" in out[1] and "embedding" in out[3]
    assert "cannot read image 0 file" in out[2]["error"]
    assert "not valid JSON" in out[4]["error"]
    assert "UTF-8" in out[5]["error"]
    embed_cases = json.loads((FIXTURES / "parity" / "embed.json").read_text())["cases"]
    full = run_qvl("embed", "--model", TINY, stdin=json.dumps(lines[0]).encode(), cwd=FIXTURES)
    assert float(np.dot(json.loads(full.stdout)["embedding"], embed_cases[0]["embedding"])) > 0.9999


def test_embed_binary_and_int8_files(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "one"}\n{"text": "two"}\n')
    for enc in ("binary", "int8"):
        dst = tmp_path / f"{enc}.jsonl"
        proc = run_qvl("embed", "-m", TINY, "--encoding", enc, "-i", str(src), "-o", str(dst))
        assert proc.returncode == 0, proc.stderr
        rows = [json.loads(x) for x in dst.read_text().splitlines()]
        assert len(rows) == 2 and all("embedding_b64" in r for r in rows)
        assert ("scale" in rows[0]) == (enc == "int8")


def test_rerank_lines() -> None:
    case = json.loads((FIXTURES / "parity" / "rerank.json").read_text())["cases"][0]["input"]
    proc = qvl("rerank", "--model", TINY, "--top-k", "2", stdin=json.dumps(case).encode(), cwd=FIXTURES)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    np.testing.assert_allclose(out["scores"], [0.356574, 0.3913851, 0.3669699, 0.3483074], atol=1e-3)
    assert out["ranking"] == [1, 2]


def test_help_explains_every_flag() -> None:
    proc = run_qvl("embed", "--help")
    text = proc.stdout.decode()
    for flag in ("--model", "--dimensions", "--encoding", "--instruction", "--batch-tokens", "--input", "--output"):
        assert flag in text


def test_tiny_model_builds_a_loadable_deterministic_checkpoint(tmp_path: Path) -> None:
    from vectorizer_service.core.items import Item
    from vectorizer_service.core.settings import Settings
    from vectorizer_service.model.served_models import load_models

    a, b = tmp_path / "a", tmp_path / "b"
    assert qvl("tiny-model", str(a)).returncode == 0  # a real process, and one in this process: the same bytes
    assert run_qvl("tiny-model", str(b)).returncode == 0
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    models = load_models(Settings(embedding_model=str(a), reranker_model=str(a), device="cpu"))
    assert models.embedder is not None and models.reranker is not None
    [vec] = models.embedder.embed([Item(texts=["hello"])])
    assert vec.values.shape == (64,)  # type: ignore[union-attr]
    assert 0.0 < models.reranker.rerank(Item(texts=["q"]), [Item(texts=["d"])]).scores[0] < 1.0  # type: ignore[operator]


def test_cli_encodings_are_the_services() -> None:
    """The parser names the encodings without importing numpy; they must stay the service's."""
    from qvl_cli.main import ENCODINGS as cli_encodings
    from vectorizer_service.core.vector_encoding import ENCODINGS

    assert cli_encodings == ENCODINGS


def test_embed_refuses_bad_dimensions_before_loading_the_model(tmp_path: Path) -> None:
    for dims in ("100000", "65", "31", "0", "-5"):
        dst = tmp_path / f"out-{dims}.jsonl"
        proc = run_qvl("embed", "--model", TINY, "--dimensions", dims, "-o", str(dst), stdin=b'{"text": "a"}\n')
        err = proc.stderr.decode()
        assert proc.returncode == 2, err
        assert "Traceback" not in err and "loading checkpoint" not in err, err
        [line] = err.strip().splitlines()
        assert "--dimensions" in line and "between 32 and 64" in line and dims in line, line
        assert not dst.exists()
    proc = run_qvl("rerank", "--model", TINY, "--top-k", "0", stdin=b'{"query": "q", "documents": ["d"]}\n')
    err = proc.stderr.decode()
    assert proc.returncode == 2 and "Traceback" not in err and "loading checkpoint" not in err, err
    [line] = err.strip().splitlines()
    assert "--top-k" in line and "at least 1" in line, line
    proc = run_qvl("embed", "--model", str(tmp_path / "no-such-model"), stdin=b'{"text": "a"}\n')
    err = proc.stderr.decode()
    assert proc.returncode == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "no-such-model" in err


def test_bad_dimensions_are_refused_before_torch_is_imported(tmp_path: Path) -> None:
    """Issue 19: `qvl embed --dimensions 31` took 6 s to refuse, importing torch (and transformers)
    to read the model's size. A checkpoint directory's size comes from its config.json."""
    probe = ("import sys\n"
             "from qvl_cli.main import main\n"
             "code = main(sys.argv[1:])\n"
             "heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
             "print(code, ','.join(heavy) or '-', file=sys.stderr)\n")
    dst = tmp_path / "out.jsonl"
    for dims in ("31", "65"):
        proc = subprocess.run([sys.executable, "-c", probe, "embed", "--model", TINY, "--dimensions", dims,
                               "-o", str(dst)], input=b'{"text": "a"}\n', capture_output=True, timeout=300)
        err = proc.stderr.decode()
        refusal, verdict = err.strip().splitlines()
        assert "--dimensions" in refusal and "between 32 and 64" in refusal, err
        assert verdict == "2 -", f"refused with {verdict.split()[1]} imported: {err}"
        assert not dst.exists()
    # A directory with an unreadable config is refused the same way, naming it.
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    proc = subprocess.run([sys.executable, "-c", probe, "embed", "--model", str(broken), "--dimensions", "32"],
                          input=b'{"text": "a"}\n', capture_output=True, timeout=300)
    refusal, verdict = proc.stderr.decode().strip().splitlines()
    assert "broken-model" in refusal and "config.json" in refusal and verdict == "2 -", proc.stderr


def test_output_line_n_answers_input_line_n() -> None:
    """Blank lines are errors too (never skipped), and every error names its input line."""
    data = (b'{"text": "one"}\n\n   \n{"text": "unterminated}\n{"text": "five"}\n'
            b'{"image": "media/missing.png"}\n')
    proc = run_qvl("embed", "--model", TINY, stdin=data, cwd=FIXTURES)
    assert proc.returncode == 1, proc.stderr
    out = [json.loads(x) for x in proc.stdout.decode().splitlines()]
    assert len(out) == 6
    assert "embedding" in out[0] and "embedding" in out[4]
    for n in (2, 3):
        assert out[n - 1]["line"] == n and out[n - 1]["error"].startswith(f"line {n}: ")
        assert "blank" in out[n - 1]["error"]
    assert out[3]["line"] == 4
    assert out[3]["error"] == "line 4: not valid JSON: Unterminated string starting at column 10"
    assert out[5]["line"] == 6 and out[5]["error"].startswith("line 6: cannot read image 0 file")
    rerank = (b'{"query": {"text": "q"}, "documents": [{"text": "d"}]}\n\n'
              b'{"query": {"image": "media/missing.png"}, "documents": [{"text": "d"}]}\n')
    proc = run_qvl("rerank", "--model", TINY, stdin=rerank, cwd=FIXTURES)
    out = [json.loads(x) for x in proc.stdout.decode().splitlines()]
    assert proc.returncode == 1 and len(out) == 3, proc.stderr
    assert "scores" in out[0] and out[1]["line"] == 2 and "blank" in out[1]["error"]
    assert out[2]["line"] == 3 and out[2]["error"].startswith("line 3: query: ")


def test_plain_strings_are_text_items_and_query_errors_say_query() -> None:
    """As in the HTTP API and the Python client: a plain string is a text item."""
    lines = [{"query": "a dog", "documents": ["a puppy", {"text": "a cat"}]},
             {"query": {"text": "a dog"}, "documents": [{"text": "a puppy"}, {"text": "a cat"}]},
             {"query": 5, "documents": ["a"]},
             {"query": "q", "documents": ["a", 7]}]
    proc = run_qvl("rerank", "--model", TINY, stdin=b"\n".join(json.dumps(x).encode() for x in lines) + b"\n")
    out = [json.loads(x) for x in proc.stdout.decode().splitlines()]
    assert proc.returncode == 1 and len(out) == 4, proc.stderr
    np.testing.assert_allclose(out[0]["scores"], out[1]["scores"], atol=1e-6)
    assert out[2]["error"].startswith("line 3: query: an item must be a JSON object or a string"), out[2]
    assert out[3]["error"].startswith("line 4: document 1: an item must be a JSON object or a string"), out[3]
    proc = run_qvl("embed", "--model", TINY, stdin=b'"a puppy"\n{"text": "a puppy"}\n')
    plain, obj = (json.loads(x)["embedding"] for x in proc.stdout.decode().splitlines())
    # Two rows of one batch: the same item, up to float noise of its place in the batch (a 7th-digit
    # difference on some CPUs' kernels).
    assert proc.returncode == 0
    np.testing.assert_allclose(plain, obj, atol=1e-6)


def test_worker_flags_out_of_range_are_refused_naming_the_flag() -> None:
    """Before anything connects: --batch 0 used to claim nothing forever, --lease -1 to hand every
    row to the next claim at once."""
    for flag, value, words in [("--batch", "0", "a whole number of at least 1"),
                               ("--concurrency", "two", "a whole number of at least 1"),
                               ("--lease", "-1", "a number of seconds above 0"),
                               ("--write-lock-wait", "nan", "a number of seconds above 0"),
                               ("--poll", "0", "a number of seconds above 0"),
                               ("--prune-every", "-5", "a number of seconds of at least 0")]:
        run = qvl if flag == "--batch" else run_qvl  # one real process for the family
        proc = run("worker", "--dsn", "postgresql:///nowhere", flag, value)
        assert proc.returncode == 2, (flag, proc.stderr)
        assert f"argument {flag}: {words}, not '{value}'" in proc.stderr.decode(), proc.stderr


def test_embed_truncate_flag_reports_or_refuses_long_text(monkeypatch: pytest.MonkeyPatch) -> None:
    long = {"text": "lorem ipsum dolor sit amet " * 30}  # the tiny tokenizer is byte-level: ~810 tokens
    data = (json.dumps({"text": "short"}) + "\n" + json.dumps(long) + "\n").encode()
    monkeypatch.setenv("QVL_EMBED_MAX_LENGTH", "256")  # read by the command's settings on each call

    def run(*flags: str) -> Ran:  # in this process: three subprocesses imported torch three times
        return run_qvl("embed", "-m", TINY, *flags, stdin=data)

    cut = run()  # the default: cut at the end, and say so
    assert cut.returncode == 0, cut.stderr
    rows = [json.loads(x) for x in cut.stdout.decode().splitlines()]
    assert "truncated_tokens" not in rows[0] and rows[1]["truncated_tokens"] > 0
    assert "line 2" in cut.stderr.decode() and "QVL_EMBED_MAX_LENGTH" in cut.stderr.decode()
    refused = run("--truncate", "none")
    assert refused.returncode == 1
    rows = [json.loads(x) for x in refused.stdout.decode().splitlines()]
    assert "embedding" in rows[0]
    assert rows[1]["line"] == 2 and "QVL_EMBED_MAX_LENGTH" in rows[1]["error"], rows[1]
    start = run("--truncate", "start")
    assert start.returncode == 0 and json.loads(start.stdout.decode().splitlines()[1])["truncated_tokens"] > 0
