"""The model fingerprint's parts (issue 23, item 1): the checkpoint digest and its cache on a real
filesystem, the settings that count, profile fingerprints, and pins in a model name."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest

from tests.support.service import TINY
from vectorizer_service.core.errors import InputError
from vectorizer_service.core.model_identity import (
    COUNTED_SETTINGS,
    model_fingerprint,
    profile_fingerprint,
    split_model_name,
)
from vectorizer_service.core.settings import Profile, Settings
from vectorizer_service.model.checkpoint_digest import DigestCache, default_cache_path, digest_checkpoint


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "ckpt"
    shutil.copytree(TINY, path)
    return path


def test_digest_is_cached_until_a_file_changes(checkpoint: Path, tmp_path: Path) -> None:
    cache_path = tmp_path / "cache" / "fingerprints.json"
    first = digest_checkpoint(str(checkpoint), cache := DigestCache(cache_path))
    cache.save()
    assert first.hashed_files == first.files and first.cached_files == 0 and first.hashed_bytes > 800_000
    again = digest_checkpoint(str(checkpoint), DigestCache(cache_path))
    assert again.digest == first.digest and again.hashed_bytes == 0 and again.cached_files == first.files

    # Other weights of the same size, the old mtime put back (as cp -p / rsync -t do): still seen.
    weights = checkpoint / "model.safetensors"
    stat = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert weights.stat().st_size == stat.st_size and weights.stat().st_mtime_ns == stat.st_mtime_ns
    changed = digest_checkpoint(str(checkpoint), DigestCache(cache_path))
    assert changed.digest != first.digest
    assert changed.hashed_files == 1 and changed.hashed_bytes == stat.st_size


def test_files_that_change_no_vector_are_left_out(checkpoint: Path) -> None:
    before = digest_checkpoint(str(checkpoint), DigestCache(None)).digest
    (checkpoint / "README.md").write_text("# a model card")
    (checkpoint / "generation_config.json").write_text(json.dumps({"temperature": 0.1}))
    assert digest_checkpoint(str(checkpoint), DigestCache(None)).digest == before
    tokenizer = checkpoint / "tokenizer_config.json"
    tokenizer.write_text(tokenizer.read_text().replace("<|im_end|>", "<|endoftext|>", 1))
    assert digest_checkpoint(str(checkpoint), DigestCache(None)).digest != before


def test_a_cache_that_cannot_be_written_or_read_costs_a_hash_only(checkpoint: Path, tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    cache = DigestCache(blocker / "fingerprints.json")  # its parent is a file: nothing can be written there
    found = digest_checkpoint(str(checkpoint), cache)
    with caplog.at_level(logging.WARNING, logger="qvl.model"):
        cache.save()
    assert "fingerprint cache cannot be written" in caplog.text
    assert found.hashed_files == found.files

    garbled = tmp_path / "garbled.json"
    garbled.write_text("{not json")
    assert digest_checkpoint(str(checkpoint), DigestCache(garbled)).digest == found.digest


def test_a_hub_id_is_hashed_from_its_cached_snapshot(checkpoint: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub id's files, as the Hugging Face cache lays them out: a snapshot of links into blobs."""
    repo = tmp_path / "hub" / "models--qvl-test--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for file in checkpoint.iterdir():
        blob = repo / "blobs" / file.name
        shutil.copy(file, blob)
        (snapshot / file.name).symlink_to(blob)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    local = digest_checkpoint(str(checkpoint), DigestCache(None))
    hub = digest_checkpoint("qvl-test/tiny", DigestCache(None))
    assert hub.digest == local.digest and hub.files == local.files


def test_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no config\.json"):
        digest_checkpoint(str(tmp_path), DigestCache(None))


def test_cache_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert default_cache_path("auto") == tmp_path / "hf" / "qvl" / "fingerprints.json"
    monkeypatch.delenv("HF_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_path("auto") == tmp_path / "xdg" / "qvl" / "fingerprints.json"
    assert default_cache_path("off") is None
    assert default_cache_path(str(tmp_path / "c.json")) == tmp_path / "c.json"


@pytest.mark.parametrize("task", ["embed", "rerank"])
def test_settings_that_count(task: str) -> None:
    base = Settings()
    fp = model_fingerprint("0123456789abcdef", base, task)
    assert model_fingerprint("fedcba9876543210", base, task) != fp  # other files
    changed = {"embed_max_length": 512, "rerank_max_length": 512, "default_instruction": "Represent it",
               "query_instruction": "Find it", "rerank_instruction": "Judge it", "image_min_pixels": 8192,
               "image_max_pixels": 65536, "video_fps": 2.0, "video_max_frames": 8, "video_total_pixels": 1 << 20}
    for name in COUNTED_SETTINGS[task]:
        assert model_fingerprint("0123456789abcdef", base.model_copy(update={name: changed[name]}), task) != fp, name
    # Numerics and throughput: the same vectors (docs/model-upgrades.md says why dtype is one of them).
    same = {"dtype": "bfloat16", "device": "cuda", "attention": "eager", "batch_tokens": 4096,
            "share_prefix": False, "max_media_bytes": 1024, "token": "secret"}
    for name, value in same.items():
        assert model_fingerprint("0123456789abcdef", base.model_copy(update={name: value}), task) == fp, name
    other = "rerank" if task == "embed" else "embed"
    assert model_fingerprint("0123456789abcdef", base, other) != fp


def test_profile_fingerprints() -> None:
    model = "0123456789abcdef"
    profile = Profile(instruction="Represent the note", query_instruction="Find the note", dimensions=32)
    fp = profile_fingerprint(model, profile)
    assert fp != model and profile_fingerprint("fedcba9876543210", profile) != fp
    assert profile_fingerprint(model, profile.model_copy(update={"instruction": "Represent it"})) != fp
    assert profile_fingerprint(model, profile.model_copy(update={"plain_strings_are_queries": True})) != fp
    # The rerank instruction changes no embedding.
    assert profile_fingerprint(model, profile.model_copy(update={"rerank_instruction": "Judge it"})) == fp


def test_model_names_pin_a_fingerprint() -> None:
    assert split_model_name(None) == (None, None)
    assert split_model_name("qvl") == ("qvl", None)
    assert split_model_name("small@0123456789abcdef") == ("small", "0123456789abcdef")
    assert split_model_name("qvl-clip@0123456789abcdef") == ("qvl-clip", "0123456789abcdef")
    with pytest.raises(InputError, match="'v2' is not a qvl model fingerprint"):
        split_model_name("qvl@v2")
