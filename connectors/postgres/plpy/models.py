"""Model identity (issue 23): a vectorizer's query vectors are asked of the model its stored vectors
came from (``qvl.vectorizer.model_fingerprint``, sent as the JSON API's "fingerprint"), and a service
serving another model is refused in words an operator acts on (the worker says the same:
connectors/postgres/worker/judge.py ``mismatch_words``)."""

from __future__ import annotations

from . import spi
from .embedding import embed_answer
from .errors import Failure, What
from .items import Item, Row
from .service import cache, model_info
from .spi import plan

RECORD_SQL = "SELECT qvl._record_model($1, $2, $3) AS recorded"

MODEL_MISMATCH = "MODEL_MISMATCH"  # the service's reason (HTTP 409) for a call pinned to another model
SQLSTATE = "55000"  # object_not_in_prerequisite_state: the stored vectors need another model


def pinned(cfg: Row) -> str | None:
    """The fingerprint to send for ``cfg``'s vectorizer (None: none recorded yet, any model answers)."""
    return cfg.get("model_fingerprint")


def embed_pinned(cfg: Row, item: Item, instruction: str | None, storage: str,
                 what: What) -> tuple[str, str | None, int]:
    """``item``'s vector text at the vectorizer's size, asked of the model its vectors came from, the
    fingerprint of the model that answered and the tokens it cut; a service serving another is refused
    (``mismatch``)."""
    try:
        # A vectorizer with a service of its own (a blue/green switch) is asked there (qvl._call_for).
        via = cfg["id"] if cfg.get("service_url") else None
        return embed_answer(item, instruction, cfg["dimensions"], storage, what, pinned(cfg), via)
    except Failure as f:
        if is_mismatch(f):
            raise mismatch(cfg, f) from None
        raise


def record(cfg: Row, answered: str | None) -> None:
    """A write of vectors from the model ``answered``: the vectorizer's first records it (in the
    writing transaction); a Failure (``mismatch``) where another model is recorded meanwhile."""
    if answered is None or cfg.get("model_fingerprint") == answered:
        return
    try:
        served = model_info("embed")
    except Failure:  # the name is for the words of a refusal only: the vector is in hand
        served = {}
    name = served.get("name") if served.get("fingerprint") == answered else None
    got = spi.plpy.execute(plan("record_model", RECORD_SQL, ["int4", "text", "text"]), [cfg["id"], answered, name])
    recorded = got[0]["recorded"]
    if recorded != answered:
        now = dict(cfg, model_fingerprint=recorded, model_name=None)
        raise mismatch(now, Failure("the vectorizer records another model", status=409, reason=MODEL_MISMATCH))


def model_words(fingerprint: str, name: str | None) -> str:
    return f"{name} (fingerprint {fingerprint})" if name else f"fingerprint {fingerprint}"


def is_mismatch(failure: Failure) -> bool:
    return failure.status == 409 and failure.reason == MODEL_MISMATCH


def mismatch(cfg: Row, refused: Failure) -> Failure:
    """The SQL error for a query refused because the service serves another model than the vectors'."""
    cache.pop("info", None)  # the model just changed: ask again which one is served
    try:
        served = model_info("embed")
    except Failure:
        served = {}
    fingerprint, name = cfg["model_fingerprint"], cfg["name"]
    now = model_words(served["fingerprint"], served.get("name")) if served.get("fingerprint") else "another model"
    quoted = "'" + name.replace("'", "''") + "'"
    return Failure(f"qvl: vectorizer {quoted}: its vectors were made by model "
                   f"{model_words(fingerprint, cfg.get('model_name'))}, but the service serves {now}; vectors of "
                   f"two models are not comparable", detail=refused.detail,
                   hint=f"Run SELECT qvl.reembed({quoted}) to move every row to the served model, or serve the "
                        f"model {fingerprint} again (docs/model-upgrades.md).",
                   sqlstate=SQLSTATE, status=409, reason=MODEL_MISMATCH)
