"""The digest of a checkpoint's files (config, tokenizer, processors, weights), streamed, and kept
between starts in a small cache so that a 16 GB checkpoint is read once, not at every start.

A file's cached hash is reused only while its path, size, mtime, ctime and inode are unchanged:
mtime alone is not enough (``cp -p`` and ``rsync -t`` keep it, and two checkpoints of one shape have
files of equal sizes), while ctime and the inode change whenever a file is written or replaced. The
cache is optional: a location that cannot be written (a read-only root filesystem) costs a full
hash at each start and a warning, never a failed start.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("qvl.model")

# What transformers reads for a Qwen3-VL checkpoint, at its top level: configs, tokenizer files, the
# chat template, weights. generation_config.json only steers text generation, which qvl never runs.
HASHED_SUFFIXES = frozenset({".json", ".safetensors", ".bin", ".pt", ".pth", ".txt", ".jinja", ".model",
                             ".tiktoken"})
NOT_HASHED = frozenset({"generation_config.json"})
CHUNK = 8 * 1024 * 1024
CACHE_ENTRIES = 4096  # entries of files that still exist are kept up to this many


@dataclass
class CheckpointDigest:
    digest: str  # 16 hex digits over every hashed file's name and content hash
    files: int
    hashed_files: int  # read this time
    hashed_bytes: int
    cached_files: int  # taken from the cache
    seconds: float


def checkpoint_dir(path: str) -> Path:
    """The directory a checkpoint's files are in: the path itself, or a hub id's snapshot in the
    Hugging Face cache (present once the model has loaded)."""
    if os.path.isdir(path):
        return Path(path)
    from huggingface_hub import snapshot_download  # a hub id only; local checkpoints never need it

    return Path(snapshot_download(repo_id=path, local_files_only=True))


def checkpoint_files(directory: Path) -> list[Path]:
    files = [p for p in directory.iterdir()
             if p.suffix in HASHED_SUFFIXES and p.name not in NOT_HASHED and p.is_file()]
    if not any(p.name == "config.json" for p in files):
        raise ValueError(f"{directory}: no config.json; not a checkpoint directory")
    return sorted(files, key=lambda p: p.name)


def _file_key(stat: os.stat_result) -> list[int]:
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def default_cache_path(setting: str) -> Path | None:
    """The cache file a ``QVL_FINGERPRINT_CACHE`` value names (None: off)."""
    if setting.strip().lower() in ("off", "none", ""):
        return None
    if setting != "auto":
        return Path(setting).expanduser()
    if os.environ.get("HF_HOME"):  # the models' volume: writable wherever checkpoints are downloaded
        return Path(os.environ["HF_HOME"]) / "qvl" / "fingerprints.json"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "qvl" / "fingerprints.json"


class DigestCache:
    """File hashes by real path, valid while the file's size, times and inode are the same."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.entries: dict[str, dict[str, Any]] = {}
        self.changed = False
        if path is not None:
            with contextlib.suppress(OSError, ValueError):
                loaded = json.loads(path.read_text())
                if isinstance(loaded, dict) and isinstance(loaded.get("files"), dict):
                    self.entries = loaded["files"]

    def lookup(self, real: str, stat: os.stat_result) -> str | None:
        entry = self.entries.get(real)
        if isinstance(entry, dict) and entry.get("key") == _file_key(stat) and isinstance(entry.get("sha256"), str):
            return entry["sha256"]
        return None

    def store(self, real: str, stat: os.stat_result, sha256: str) -> None:
        self.entries[real] = {"key": _file_key(stat), "sha256": sha256}
        self.changed = True

    def save(self) -> None:
        """Write the cache atomically (replicas may share it); a failure only costs the next start a hash."""
        if self.path is None or not self.changed:
            return
        kept = {k: v for k, v in self.entries.items() if os.path.exists(k)}
        kept = dict(list(kept.items())[-CACHE_ENTRIES:])
        tmp: str | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".fingerprints-", dir=self.path.parent)
            with os.fdopen(fd, "w") as fh:
                json.dump({"version": 1, "files": kept}, fh)
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("the fingerprint cache cannot be written: the checkpoint is hashed again at the next "
                        "start (set QVL_FINGERPRINT_CACHE to a writable file, or off)",
                        extra={"cache": str(self.path), "error": str(exc)})
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)


def digest_checkpoint(path: str, cache: DigestCache) -> CheckpointDigest:
    """Hash the checkpoint's files (each streamed; unchanged ones from the cache) into one digest."""
    started = time.perf_counter()
    lines, hashed_files, hashed_bytes, cached = [], 0, 0, 0
    for file in checkpoint_files(checkpoint_dir(path)):
        real = os.path.realpath(file)  # a hub snapshot's files are links into its blobs
        stat = os.stat(real)
        sha256 = cache.lookup(real, stat)
        if sha256 is None:
            sha256 = _hash_file(Path(real))
            after = os.stat(real)
            if _file_key(after) == _file_key(stat):  # not written to while it was read
                cache.store(real, stat, sha256)
            hashed_files += 1
            hashed_bytes += stat.st_size
        else:
            cached += 1
        lines.append(f"{file.name}\t{sha256}\n")
    digest = hashlib.sha256("".join(lines).encode()).hexdigest()[:16]
    return CheckpointDigest(digest, len(lines), hashed_files, hashed_bytes, cached,
                            round(time.perf_counter() - started, 3))
