"""qvl's PL/Python library: what the PL/Python functions of schema ``qvl`` run inside the database.

It runs in the database server's own Python (PL/Python, ``plpython3u``), not in the project's
environment, so it uses the standard library only and reaches the model service over its HTTP JSON
API (docs/api.md).

How it gets there: ``qvl pg install`` writes this file's text into the body of ``qvl._load()``,
which executes it as a module and keeps the module in ``GD`` (the dictionary every PL/Python
function of a backend shares) under a key derived from the text's hash. Each PL/Python function
starts with the prologue the installer writes at its ``# qvl:prologue`` marker: it takes the
module from ``GD``, calling ``qvl._load()`` first when this backend has not loaded this version.

``plpy`` is not imported: PL/Python provides it, and the loader sets it as a global of this module
after executing it. Tests set a stand-in, so everything here imports and runs without a database.
"""

from __future__ import annotations

import array
import base64
import contextlib
import http.client
import json
import math
import re
import socket
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NoReturn

plpy: Any = None  # PL/Python's module, set by qvl._load() (a stand-in in tests)

Row = Mapping[str, Any]
Item = dict[str, Any]
# Names the failing input for an error message, from the item index the service reports (or None).
What = Callable[[int | None], str]
Quote = Callable[[str], str]

DEFAULT_QUERY_INSTRUCTION = "Retrieve images or text relevant to the user's query."
ROUTES = {"embed": ("POST", "/v1/embed"), "rerank": ("POST", "/v1/rerank"), "info": ("GET", "/v1/info")}
SQLSTATE = {400: "22023", 404: "22023", 422: "22023", 413: "54000", 401: "28000", 403: "28000",
            429: "53000", 503: "53000", 504: "57014", 0: "08001"}
MEDIA_HINT = ("Fix or leave out that input: images must be PNG, JPEG, WebP, GIF, BMP or TIFF bytes, videos "
              "MP4, MOV, WebM, MKV or GIF bytes (or a bytea[] of frames), and a path/URI is read only where the "
              "service allows it (QVL_ALLOW_URI_SCHEMES, QVL_ALLOW_URI_ROOTS).")
BUSY_HINT = ("The service is busy or still starting; retry shortly (more replicas or a larger QVL_QUEUE_MAX_ITEMS "
             "help under load).")
TOKEN_HINT = "The installing role sets the token: SELECT qvl.set_service(url, token);"
HINTS = {
    0: "Start the service (qvl serve) or, as the installing role, point qvl at it: "
       "SELECT qvl.set_service('http://host:8080');",
    401: TOKEN_HINT,
    403: TOKEN_HINT,
    413: "Send a smaller image or a shorter video, or raise the service limits (QVL_MAX_MEDIA_BYTES, "
         "QVL_MAX_REQUEST_BYTES).",
    429: BUSY_HINT,
    503: BUSY_HINT,
    504: "Send smaller inputs, or give the service longer: SELECT qvl.set_service(url, token, timeout_s => 120);",
    500: "The model failed on this input; the service log has the details.",
}
SYNC_QUEUE_HINT = (" Or create the vectorizer with on_error => 'queue' to store the row "
                   "now and embed it later through the worker.")
ITEM_PREFIX = re.compile(r"^((item|document) \d+|query): ")
INFO_TTL_S = 60.0
RETRY_AFTER_S = (0.05, 5.0)  # bounds of a 429/503 Retry-After wait

# Per backend (the module lives as long as the backend's GD entry).
plans: dict[Any, Any] = {}  # prepared statements by key
conns: dict[tuple[str, Any, int], http.client.HTTPConnection] = {}  # keep-alive connections by (scheme, host, port)
cache: dict[str, tuple[float, Any]] = {}  # "info": (when, GET /v1/info answer)


class Failure(Exception):
    """A service error on its way to becoming a SQL error (caught where the caller can fall back)."""

    def __init__(self, message: str, detail: str | None = None, hint: str | None = None,
                 sqlstate: str = "XX000", status: int | None = None) -> None:
        Exception.__init__(self, message)
        self.message, self.detail, self.hint, self.sqlstate, self.status = message, detail, hint, sqlstate, status

    def raise_sql(self) -> NoReturn:
        plpy.error(self.message, detail=self.detail, hint=self.hint, sqlstate=self.sqlstate)


def plan(key: Any, query: str, argtypes: Sequence[str] = ()) -> Any:
    """The prepared statement of ``query``, prepared once per backend under ``key``."""
    p = plans.get(key)
    if p is None:
        p = plans[key] = plpy.prepare(query, list(argtypes))
    return p


# -- HTTP: runs inside qvl._call, i.e. as the owner, the only reader of qvl.service -------------
def error_body(error: str, code: str) -> str:
    return json.dumps({"error": error, "code": code})


def target(url: str, route_path: str) -> tuple[str, Any, int, str]:
    """(scheme, host, port, request path) of a route under the service URL (which may have a path)."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, parts.hostname, port, parts.path.rstrip("/") + route_path


def _drop(key: tuple[str, Any, int]) -> None:
    conn = conns.pop(key, None)
    if conn is not None:
        with contextlib.suppress(Exception):
            conn.close()


def retry_after(value: str | None) -> float:
    """Seconds to wait on a 429/503: the service's Retry-After (default 1), within RETRY_AFTER_S."""
    try:
        return max(RETRY_AFTER_S[0], min(RETRY_AFTER_S[1], float(value or 1)))
    except ValueError:
        return 1.0


def send(endpoint: str, request: str) -> tuple[int, str]:
    """(status, body) of one call to the configured service; status 0 when unreachable. Never raises."""
    route = ROUTES.get(endpoint)
    if route is None:
        return 400, json.dumps({"error": f"unknown endpoint {endpoint!r}", "code": "INVALID_ARGUMENT"})
    rows = plpy.execute(plan("service", "SELECT url, token, timeout_s FROM qvl.service"))
    if rows.nrows() == 0:
        return 0, error_body("no service address is configured", "UNAVAILABLE")
    svc = rows[0]
    return http_send(svc["url"], svc["token"], float(svc["timeout_s"]), route, request)


def http_send(url: str, token: str | None, timeout: float, route: tuple[str, str], request: str) -> tuple[int, str]:
    """One HTTP exchange on a kept-alive connection; (0, ...) unreachable, (504, ...) no answer in time.

    A kept-alive connection the server had closed is retried once on a new one; 429 and 503 are
    retried after the service's Retry-After while that fits in ``timeout``.
    """
    method, route_path = route
    scheme, host, port, path = target(url, route_path)
    where = f"{host}:{port}"
    headers = {"Content-Type": "application/json", "User-Agent": "qvl-postgres"}
    if token:
        headers["Authorization"] = "Bearer " + token
    body = request.encode("utf-8") if method == "POST" else None
    key = (scheme, host, port)
    deadline = time.monotonic() + timeout
    while True:
        conn = conns.get(key)
        fresh = conn is None
        try:
            if conn is None:
                cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
                conn = conns[key] = cls(host, port, timeout=timeout)
                conn.connect()
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except TimeoutError:
            _drop(key)
            return 504, error_body(f"no answer from the qvl service at {where} within {timeout:g} s",
                                   "DEADLINE_EXCEEDED")
        except (OSError, http.client.HTTPException) as exc:
            _drop(key)
            if not fresh:
                continue  # a kept-alive connection the server had closed: once more on a new one
            return 0, error_body(f"cannot reach the qvl service at {where}: {exc}", "UNAVAILABLE")
        if resp.will_close:
            _drop(key)
        if resp.status in (429, 503):
            wait = retry_after(resp.getheader("Retry-After"))
            if time.monotonic() + wait < deadline:
                time.sleep(wait)  # queue full or warming up: wait as the service asks, within the deadline
                continue
        return resp.status, data.decode("utf-8", "replace")


# -- calls, as the invoker ---------------------------------------------------------------------
def call(endpoint: str, payload: Any, what: What) -> Any:
    """The decoded answer; any failure raises Failure naming ``what(item index or None)``."""
    body = json.dumps(payload, separators=(",", ":"))
    row = plpy.execute(plan("call", "SELECT status, response FROM qvl._call($1, $2)", ["text", "text"]),
                       [endpoint, body])[0]
    return answer(endpoint, row["status"], row["response"], what)


def answer(endpoint: str, status: int, text: str, what: What) -> Any:
    """The JSON of a 200 answer; else raises the Failure that ``status`` and ``text`` describe.
    A 200 that is not a JSON object is the service's failure (``malformed``), not the input's."""
    if status == 200:
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise malformed(endpoint, f"a 200 answer that is not a JSON object: {text[:200]!r}")
        return data
    raise failure(endpoint, status, text, what)


def malformed(endpoint: str, what: str) -> Failure:
    return Failure("qvl: the model service answered something malformed", detail=f"{endpoint}: {what}",
                   hint="The service (or something between it and the database) is broken or not qvl's "
                        "service; check qvl.set_service and the service log.", sqlstate="XX000", status=200)


def failure(endpoint: str, status: int, text: str | None, what: What) -> Failure:
    """The SQL error (message, detail, hint, SQLSTATE) for a failed call."""
    try:
        info = json.loads(text) if text else {}
    except ValueError:
        info = {}
    if not isinstance(info, dict):
        info = {}
    error = str(info.get("error") or (text or "")[:300] or f"HTTP {status}")
    item = info.get("item")
    subject = what(item if isinstance(item, int) else None)
    reason = ITEM_PREFIX.sub("", error)
    if status == 0:
        message = "qvl: cannot reach the model service"
    elif status in (400, 404, 413, 422):
        message = f"qvl: the model service refused {subject}: {reason}"
    elif status in (401, 403):
        message = "qvl: the model service refused the token"
    elif status in (429, 503):
        message = "qvl: the model service is busy or starting"
    elif status == 504:
        message = "qvl: the model service did not answer in time"
    else:
        message = f"qvl: the model service failed on {subject}: {reason}"
    hint = HINTS.get(status) or (MEDIA_HINT if status in (400, 422) else HINTS[500])
    return Failure(message, detail=f"{endpoint} {status or 'unreachable'}: {error}", hint=hint,
                   sqlstate=SQLSTATE.get(status, "XX000"), status=status)


def info() -> Any:
    """GET /v1/info, remembered for INFO_TTL_S seconds per backend."""
    hit = cache.get("info")
    if hit is not None and time.monotonic() - hit[0] < INFO_TTL_S:
        return hit[1]
    data = call("info", None, lambda i: "the info request")
    cache["info"] = (time.monotonic(), data)
    return data


def model_info(task: str) -> dict[str, Any]:
    for m in info().get("models", []):
        if m.get("task") == task:
            return m
    return {}


def query_instruction() -> str:
    return model_info("embed").get("query_instruction") or DEFAULT_QUERY_INSTRUCTION


# -- items ---------------------------------------------------------------------------------------
BINARY = (bytes, bytearray, memoryview)


def b64(data: bytes | bytearray | memoryview) -> str:
    return base64.b64encode(bytes(data)).decode("ascii")


def _flat(values: Iterable[Any]) -> Iterator[Any]:
    for v in values:
        if isinstance(v, list):
            for x in v:
                if x is not None:
                    yield x
        elif v is not None:
            yield v


def make_item(texts: Iterable[Any] = (), images: Iterable[Any] = (), videos: Iterable[Any] = ()) -> Item | None:
    """A JSON item from column values: one joint item, or None when every value is NULL.

    Images: bytea = bytes, text = a path/URI for the service. Video: bytea = a file, bytea[] = its
    frames, text = a path/URI. Same order as the worker's gRPC items: video, images, URIs, texts.
    """
    item: Item = {}
    for v in videos:
        if v is None:
            continue
        if isinstance(v, list):
            item["frames"] = [b64(f) for f in v if f is not None]
        elif isinstance(v, BINARY):
            item["video"] = b64(v)
        else:
            item["video_uri"] = str(v)
    pictures = list(_flat(images))
    raw = [b64(x) for x in pictures if isinstance(x, BINARY)]
    uris = [str(x) for x in pictures if not isinstance(x, BINARY)]
    if raw:
        item["image"] = raw
    if uris:
        item["image_uri"] = uris
    text = [str(t) for t in _flat(texts)]
    if text:
        item["text"] = text
    return item or None


def row_item(cfg: Row, row: Row) -> Item | None:
    return make_item([row[c] for c in cfg["text_columns"]], [row[c] for c in cfg["image_columns"]],
                     [row[c] for c in cfg["video_columns"]])


def text_item(value: str | None) -> Item | None:
    return None if value is None else {"text": [value]}


def image_item(value: bytes | None) -> Item | None:
    return None if value is None else {"image": [b64(value)]}


# -- embeddings ----------------------------------------------------------------------------------
def vector_text(emb: Mapping[str, Any], storage: str, dims: int | None) -> str:
    """pgvector's text form ('[...]' or a bit string) of one answer."""
    if "embedding_b64" in emb:
        raw = base64.b64decode(emb["embedding_b64"])
        if storage == "bit":
            return "".join(format(b, "08b") for b in raw)[:dims]
        floats = array.array("f")
        floats.frombytes(raw)
        if sys.byteorder != "little":
            floats.byteswap()
        values = floats.tolist()
    else:
        values = emb["embedding"]
    return "[" + ",".join(map(repr, values)) + "]"


def embed_request(item: Item | None, instruction: str | None, dimensions: int | None, storage: str) -> dict[str, Any]:
    """The POST /v1/embed body for one item (binary encoding for bit storage, else float32)."""
    payload: dict[str, Any] = {"items": [item if item is not None else {}], "format": "base64",
                               "encoding": "binary" if storage == "bit" else "float32"}
    if instruction is not None:
        payload["instruction"] = instruction
    if dimensions is not None:
        payload["dimensions"] = dimensions
    return payload


def embed_text(item: Item | None, instruction: str | None, dimensions: int | None, storage: str,
               what: What) -> str:
    """The vector's text; a Failure for an answer without one or with a value that is not finite."""
    resp = call("embed", embed_request(item, instruction, dimensions, storage), what)
    try:
        text = vector_text(resp["embeddings"][0], storage, resp.get("dimensions"))
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise malformed("embed", f"no vector in the answer ({type(exc).__name__}: {exc})") from None
    if storage != "bit" and not all(math.isfinite(float(x)) for x in text.strip("[]").split(",")):
        raise Failure(f"qvl: the model service returned a vector that is not finite (NaN or infinity) for "
                      f"{what(None)}", detail="embed 200: a NaN or infinite value", hint=HINTS[500],
                      sqlstate="XX000", status=200)
    return text


def embed_sql(text: str | None, image: bytes | None, video: bytes | None, instruction: str | None,
              dimensions: int | None, storage: str) -> str | None:
    """qvl.embed and qvl.embed_halfvec."""
    item = make_item([text], [image], [video]) or {}
    try:
        return embed_text(item, instruction, dimensions, storage, lambda i: "the input")
    except Failure as f:
        f.raise_sql()


# -- reranking -----------------------------------------------------------------------------------
def rerank_request(query_item: Item | None, doc_items: Sequence[Item | None], instruction: str | None,
                   top_k: int | None) -> dict[str, Any] | None:
    """The POST /v1/rerank body, or None when there is nothing to rank (no query, no documents, top_k < 1)."""
    if query_item is None or not doc_items:
        return None
    payload: dict[str, Any] = {"query": query_item, "documents": [d or {} for d in doc_items]}
    if instruction is not None:
        payload["instruction"] = instruction
    if top_k is not None:
        if top_k < 1:
            return None
        payload["top_k"] = top_k
    return payload


def rerank_what(i: int | None) -> str:
    return "the query" if i is None else f"documents[{i + 1}]"


def rerank_sql(query_item: Item | None, doc_items: Sequence[Item | None], instruction: str | None,
               top_k: int | None) -> list[tuple[int, float]]:
    """qvl.rerank: (1-based index, score) best first."""
    payload = rerank_request(query_item, doc_items, instruction, top_k)
    if payload is None:
        return []
    try:
        resp = call("rerank", payload, rerank_what)
    except Failure as f:
        f.raise_sql()
    return [(r["index"] + 1, r["score"]) for r in resp["ranking"]]


# -- vectorizers ---------------------------------------------------------------------------------
VECTORIZER_SQL = """
SELECT v.id, v.name, v.pk_columns, v.pk_types, v.text_columns, v.image_columns, v.video_columns,
       v.destination, v.dimensions, v.storage, v.instruction, v.query_instruction, v.mode, v.on_error,
       format('%%I.%%I', n.nspname, c.relname) AS source_sql,
       (SELECT format('%%I', ns.nspname) FROM pg_catalog.pg_extension e
          JOIN pg_catalog.pg_namespace ns ON ns.oid = e.extnamespace WHERE e.extname = 'vector') AS vector_schema
  FROM qvl.vectorizer v
  JOIN pg_catalog.pg_class c ON c.oid = v.source
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE %s"""


def vectorizer_by_name(name: str) -> Row:
    rows = plpy.execute(plan("vec_by_name", VECTORIZER_SQL % "v.name = $1", ["text"]), [name])
    if rows.nrows() == 0:
        plpy.error(f"qvl: no vectorizer named {name!r}", hint="See SELECT name FROM qvl.vectorizer_status;",
                   sqlstate="42704")
    return rows[0]


def vectorizer_by_id(vid: int) -> Row:
    rows = plpy.execute(plan("vec_by_id", VECTORIZER_SQL % "v.id = $1", ["int4"]), [vid])
    if rows.nrows() == 0:
        plpy.error(f"qvl: vectorizer {vid} is gone; its trigger should have been dropped", sqlstate="42704")
    return rows[0]


def pk_text(cfg: Row, row: Row) -> str:
    values = [row[c] for c in cfg["pk_columns"]]
    return str(values[0]) if len(values) == 1 else "(" + ",".join(map(str, values)) + ")"


def enqueue_sql(vid: int, pk_columns: Sequence[str], quote: Quote) -> str:
    """Queue one row by primary key ($1, $2, ...), releasing any claim on it."""
    cols = ", ".join(quote(c) for c in pk_columns)
    params = ", ".join(f"${i + 1}" for i in range(len(pk_columns)))
    return (f"INSERT INTO qvl.queue_{vid} ({cols}) VALUES ({params}) ON CONFLICT ({cols}) DO UPDATE "
            f"SET claimed_until = NULL, claimed_by = NULL, not_before = NULL")


def enqueue(cfg: Row, row: Row) -> None:
    query = enqueue_sql(cfg["id"], cfg["pk_columns"], plpy.quote_ident)
    plpy.execute(plan(("enqueue", cfg["id"]), query, cfg["pk_types"]), [row[c] for c in cfg["pk_columns"]])
    plpy.execute(plan("notify", "SELECT pg_catalog.pg_notify('qvl_queue', $1)", ["text"]), [str(cfg["id"])])


def sync_trigger(TD: dict[str, Any]) -> str:
    """BEFORE INSERT/UPDATE of a 'sync' vectorizer: the vector is in the row when the statement ends."""
    cfg = vectorizer_by_id(int(TD["args"][0]))
    new = TD["new"]
    dest = cfg["destination"]
    item = row_item(cfg, new)
    if item is None:
        new[dest] = None
        return "MODIFY"
    where = f"row {pk_text(cfg, new)} of {cfg['source_sql']}"
    try:
        new[dest] = embed_text(item, cfg["instruction"], cfg["dimensions"], cfg["storage"], lambda i: where)
    except Failure as f:
        if cfg["on_error"] != "queue":
            f.hint = (f.hint or "") + SYNC_QUEUE_HINT
            f.raise_sql()
        new[dest] = None
        enqueue(cfg, new)
        plpy.notice(f"qvl: {where} queued for the worker: {f.message}")
    return "MODIFY"


# -- two-stage search ----------------------------------------------------------------------------
def search_sql(cfg: Row, rerank: bool, quote: Quote) -> tuple[str, list[str]]:
    """The candidate query ($1 = query vector, $2 = how many) and its argument types.

    Every name is qualified (the operator in pgvector's schema); with ``rerank`` it also reads the
    content columns the reranker scores.
    """
    storage, vs, dims = cfg["storage"], cfg["vector_schema"], cfg["dimensions"]
    dest = "s." + quote(cfg["destination"])
    if storage == "bit":
        qtype, op = f"bit({dims})", f"OPERATOR({vs}.<~>)"
    else:
        qtype, op = f"{vs}.{storage}({dims})", f"OPERATOR({vs}.<=>)"
    pk = cfg["pk_columns"]
    keys = ", ".join("s." + quote(c) for c in pk)
    pk_sql = f"{keys}::text" if len(pk) == 1 else f"ROW({keys})::text"
    content = list(cfg["text_columns"]) + list(cfg["image_columns"]) + list(cfg["video_columns"])
    cols = "".join(f", s.{quote(c)}" for c in content) if rerank else ""
    sql = (f"SELECT {pk_sql} AS qvl_pk, ({dest} {op} $1)::real AS qvl_distance{cols} FROM {cfg['source_sql']} s "
           f"WHERE {dest} IS NOT NULL ORDER BY {dest} {op} $1 LIMIT $2")
    return sql, [qtype, "int8"]


def ef_search(old: str | None, candidates: int) -> int:
    """hnsw.ef_search for a query of ``candidates`` rows (HNSW returns at most ef_search rows)."""
    return min(1000, max(40, candidates, int(old) if old and old.isdigit() else 0))


def search_rows(name: str, query_item: Item | None, k: int | None, candidates: int | None,
                rerank: bool) -> list[tuple[str, float, float | None]]:
    """ANN over the vectorizer's column with the query instruction, then the reranker over the
    candidates' own columns. Runs as the caller: their privileges (and row security) apply."""
    cfg = vectorizer_by_name(name)
    if query_item is None or k is None or k < 1:
        return []
    candidates = max(candidates or 0, k)
    try:
        qvec = embed_text(query_item, cfg["query_instruction"] or query_instruction(), cfg["dimensions"],
                          cfg["storage"], lambda i: "the query")
    except Failure as f:
        f.raise_sql()
    sql, argtypes = search_sql(cfg, rerank, plpy.quote_ident)
    p = plan(("search", cfg["id"], cfg["dimensions"], bool(rerank)), sql, argtypes)
    # HNSW returns at most ef_search rows: widen it to the candidate count for this query only.
    old = plpy.execute("SELECT pg_catalog.current_setting('hnsw.ef_search', true) AS v")[0]["v"]
    setter = plan("set_ef", "SELECT pg_catalog.set_config('hnsw.ef_search', $1, true)", ["text"])
    plpy.execute(setter, [str(ef_search(old, candidates))])
    try:
        rows = plpy.execute(p, [qvec, candidates])
    finally:
        plpy.execute(setter, [old or "40"])
    if not rerank or rows.nrows() == 0:
        return [(r["qvl_pk"], r["qvl_distance"], None) for r in rows][:k]
    docs = [row_item(cfg, r) or {} for r in rows]
    payload = {"query": query_item, "documents": docs, "top_k": k, "allow_partial": True}
    try:
        resp = call("rerank", payload,
                    lambda i: "the query" if i is None or i >= rows.nrows() else f"row {rows[i]['qvl_pk']}")
    except Failure as f:
        f.raise_sql()
    return [(rows[r["index"]]["qvl_pk"], rows[r["index"]]["qvl_distance"], r["score"]) for r in resp["ranking"]]
