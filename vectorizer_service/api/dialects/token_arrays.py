"""Token arrays on ``/v1/embeddings``: OpenAI's API takes ``input`` as token ids, and LangChain's
``OpenAIEmbeddings`` sends nothing else (it counts and chunks text with tiktoken).

The ids are in the encoding OpenAI's tokenizer gives the request's ``model`` (``cl100k_base`` for
the embedding models, and for any name tiktoken does not know, as LangChain assumes). They are
decoded back to text, which the model then tokenizes with its own tokenizer. The encoding's BPE
file is read from ``QVL_TIKTOKEN_CACHE_DIR`` (tiktoken's cache layout: ``sha1(<its URL>)``, where
``make setup`` installs cl100k_base); nothing is downloaded: an encoding without its file there is
a 400 saying so.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import tiktoken
import tiktoken.model

from vectorizer_service.core.errors import InputError

DEFAULT_ENCODING = "cl100k_base"
# Where tiktoken fetches OpenAI's encodings from; its cache names each file by the SHA-1 of this URL.
BLOB_URL = "https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"


def is_token_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(t, int) and not isinstance(t, bool)
                                                           for t in value)


def encoding_name(model: str | None) -> str:
    """The encoding OpenAI's tokenizer uses for ``model`` (tiktoken's table), else cl100k_base."""
    try:
        return tiktoken.model.encoding_name_for_model(model or "")
    except KeyError:
        return DEFAULT_ENCODING


class TokenArrays:
    """Decodes token arrays; encodings are loaded from ``cache_dir`` on first use."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = Path(cache_dir)
        self.encodings: dict[str, tiktoken.Encoding] = {}
        self.lock = threading.Lock()

    def encoding(self, model: str | None) -> tiktoken.Encoding:
        name = encoding_name(model)
        with self.lock:
            if name not in self.encodings:
                self.encodings[name] = self._load(name, model)
            return self.encodings[name]

    def _load(self, name: str, model: str | None) -> tiktoken.Encoding:
        path = self.cache_dir / hashlib.sha1(BLOB_URL.format(name=name).encode()).hexdigest()
        if not path.is_file():
            raise InputError(f"token arrays for model {model!r} are ids of OpenAI's {name} encoding, and this "
                             f"server has no copy of it (it looks for {path}, QVL_TIKTOKEN_CACHE_DIR); send "
                             f"the text instead")
        # tiktoken reads its cache directory from the environment; the file is there, so it reads
        # (and checks the SHA-256 of) that copy and downloads nothing.
        previous = os.environ.get("TIKTOKEN_CACHE_DIR")
        os.environ["TIKTOKEN_CACHE_DIR"] = str(self.cache_dir)
        try:
            return tiktoken.get_encoding(name)
        finally:
            if previous is None:
                del os.environ["TIKTOKEN_CACHE_DIR"]
            else:
                os.environ["TIKTOKEN_CACHE_DIR"] = previous

    def text(self, ids: list[int], model: str | None, max_length: int) -> str:
        """The text of ``ids``; an id outside the encoding, or more ids than the model's maximum
        length (as OpenAI refuses more than its models take), is an ``InputError``."""
        enc = self.encoding(model)
        if len(ids) > max_length:
            raise InputError(f"{len(ids)} tokens of {enc.name}, over the maximum length of {max_length} "
                             f"(QVL_EMBED_MAX_LENGTH)", limit="QVL_EMBED_MAX_LENGTH")
        try:
            data = enc.decode_bytes(ids)
        except (KeyError, OverflowError, ValueError, TypeError):
            bad = next(t for t in ids if not _in_encoding(enc, t))
            raise InputError(f"token {bad} is not in {enc.name} (its ids run from 0 to {enc.max_token_value}, "
                             f"with gaps)") from None
        # A chunk boundary may split a character (LangChain cuts long text every N tokens).
        return data.decode("utf-8", errors="replace")


def _in_encoding(enc: tiktoken.Encoding, token: int) -> bool:
    try:
        enc.decode_single_token_bytes(token)
    except (KeyError, OverflowError, ValueError, TypeError):
        return False
    return True
