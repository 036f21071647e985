-- qvl 002: calling the model service from SQL (PL/Python, standard library only).
--
-- PL/Python runs the server's own Python, not the project's environment, so everything here
-- uses the standard library and talks to the service's HTTP JSON API (docs/api.md).
--
-- Layout: qvl._load() puts one library object into GD (shared by every PL/Python function of a
-- backend); each function below fetches it in four lines. Only qvl._call is SECURITY DEFINER: it
-- alone reads qvl.service (address and token) and holds the per-backend keep-alive connections.
-- The library key carries a version: an upgrade that changes the library bumps it, so sessions
-- that loaded the old code pick up the new one.

CREATE FUNCTION qvl._load() RETURNS void LANGUAGE plpython3u VOLATILE AS $py$
import array
import base64
import http.client
import json
import re
import socket
import sys
import time
import types
import urllib.parse

KEY = "qvl_lib_1"
DEFAULT_QUERY_INSTRUCTION = "Retrieve images or text relevant to the user's query."
ROUTES = {"embed": ("POST", "/v1/embed"), "rerank": ("POST", "/v1/rerank"), "info": ("GET", "/v1/info")}
SQLSTATE = {400: "22023", 404: "22023", 422: "22023", 413: "54000", 401: "28000", 403: "28000",
            429: "53000", 503: "53000", 504: "57014", 0: "08001"}
MEDIA_HINT = ("Fix or leave out that input: images must be PNG, JPEG, WebP, GIF, BMP or TIFF bytes, videos "
              "MP4, MOV, WebM, MKV or GIF bytes (or a bytea[] of frames), and a path/URI is read only where the "
              "service allows it (QVL_ALLOW_URI_SCHEMES, QVL_ALLOW_URI_ROOTS).")
HINTS = {
    0: "Start the service (qvl serve) or, as the installing role, point qvl at it: "
       "SELECT qvl.set_service('http://host:8080');",
    401: "The installing role sets the token: SELECT qvl.set_service(url, token);",
    403: "The installing role sets the token: SELECT qvl.set_service(url, token);",
    413: "Send a smaller image or a shorter video, or raise the service limits (QVL_MAX_MEDIA_BYTES, "
         "QVL_MAX_REQUEST_BYTES).",
    429: "The service is busy or still starting; retry shortly (more replicas or a larger QVL_QUEUE_MAX_ITEMS "
         "help under load).",
    503: "The service is busy or still starting; retry shortly (more replicas or a larger QVL_QUEUE_MAX_ITEMS "
         "help under load).",
    504: "Send smaller inputs, or give the service longer: SELECT qvl.set_service(url, token, timeout_s => 120);",
    500: "The model failed on this input; the service log has the details.",
}
ITEM_PREFIX = re.compile(r"^((item|document) \d+|query): ")

plans = {}
conns = {}
cache = {}


class Failure(Exception):
    """A service error on its way to becoming a SQL error (caught where the caller can fall back)."""

    def __init__(self, message, detail=None, hint=None, sqlstate="XX000", status=None):
        Exception.__init__(self, message)
        self.message, self.detail, self.hint, self.sqlstate, self.status = message, detail, hint, sqlstate, status

    def raise_sql(self):
        plpy.error(self.message, detail=self.detail, hint=self.hint, sqlstate=self.sqlstate)


def plan(key, query, argtypes=()):
    p = plans.get(key)
    if p is None:
        p = plans[key] = plpy.prepare(query, list(argtypes))
    return p


# -- HTTP: runs inside qvl._call, i.e. as the owner, the only reader of qvl.service -------------
def _drop(key):
    conn = conns.pop(key, None)
    if conn is not None:
        try:
            conn.close()
        except Exception:
            pass


def _retry_after(resp):
    try:
        return max(0.05, min(5.0, float(resp.getheader("Retry-After") or 1)))
    except ValueError:
        return 1.0


def send(endpoint, request):
    """(status, body) of one call; status 0 when the service cannot be reached. Never raises."""
    route = ROUTES.get(endpoint)
    if route is None:
        return 400, json.dumps({"error": "unknown endpoint %r" % (endpoint,), "code": "INVALID_ARGUMENT"})
    rows = plpy.execute(plan("service", "SELECT url, token, timeout_s FROM qvl.service"))
    if rows.nrows() == 0:
        return 0, json.dumps({"error": "no service address is configured", "code": "UNAVAILABLE"})
    svc = rows[0]
    url = urllib.parse.urlsplit(svc["url"])
    method, path = route
    path = url.path.rstrip("/") + path
    timeout = float(svc["timeout_s"])
    port = url.port or (443 if url.scheme == "https" else 80)
    where = "%s:%s" % (url.hostname, port)
    headers = {"Content-Type": "application/json", "User-Agent": "qvl-postgres"}
    if svc["token"]:
        headers["Authorization"] = "Bearer " + svc["token"]
    body = request.encode("utf-8") if method == "POST" else None
    key = (url.scheme, url.hostname, port)
    deadline = time.monotonic() + timeout
    while True:
        conn = conns.get(key)
        fresh = conn is None
        try:
            if fresh:
                cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
                conn = conns[key] = cls(url.hostname, port, timeout=timeout)
                conn.connect()
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except TimeoutError:
            _drop(key)
            return 504, json.dumps({"error": "no answer from the qvl service at %s within %g s" % (where, timeout),
                                    "code": "DEADLINE_EXCEEDED"})
        except (OSError, http.client.HTTPException) as exc:
            _drop(key)
            if not fresh:
                continue  # a kept-alive connection the server had closed: once more on a new one
            return 0, json.dumps({"error": "cannot reach the qvl service at %s: %s" % (where, exc),
                                  "code": "UNAVAILABLE"})
        if resp.will_close:
            _drop(key)
        if resp.status in (429, 503):
            wait = _retry_after(resp)
            if time.monotonic() + wait < deadline:
                time.sleep(wait)  # queue full or warming up: wait as the service asks, within the deadline
                continue
        return resp.status, data.decode("utf-8", "replace")


# -- calls, as the invoker ---------------------------------------------------------------------
def call(endpoint, payload, what):
    """The decoded answer; any failure raises Failure naming ``what(item index or None)``."""
    body = json.dumps(payload, separators=(",", ":"))
    row = plpy.execute(plan("call", "SELECT status, response FROM qvl._call($1, $2)", ["text", "text"]),
                       [endpoint, body])[0]
    status, text = row["status"], row["response"]
    if status == 200:
        return json.loads(text)
    raise failure(endpoint, status, text, what)


def failure(endpoint, status, text, what):
    try:
        info = json.loads(text) if text else {}
    except ValueError:
        info = {}
    if not isinstance(info, dict):
        info = {}
    error = str(info.get("error") or (text or "")[:300] or "HTTP %d" % status)
    item = info.get("item")
    subject = what(item if isinstance(item, int) else None)
    reason = ITEM_PREFIX.sub("", error)
    sqlstate = SQLSTATE.get(status, "XX000")
    if status == 0:
        message = "qvl: cannot reach the model service"
    elif status in (400, 404, 413, 422):
        message = "qvl: the model service refused %s: %s" % (subject, reason)
    elif status in (401, 403):
        message = "qvl: the model service refused the token"
    elif status in (429, 503):
        message = "qvl: the model service is busy or starting"
    elif status == 504:
        message = "qvl: the model service did not answer in time"
    else:
        message = "qvl: the model service failed on %s: %s" % (subject, reason)
    hint = HINTS.get(status) or (MEDIA_HINT if status in (400, 422) else HINTS[500])
    return Failure(message, detail="%s %s: %s" % (endpoint, status or "unreachable", error), hint=hint,
                   sqlstate=sqlstate, status=status)


def info():
    hit = cache.get("info")
    if hit is not None and time.monotonic() - hit[0] < 60:
        return hit[1]
    data = call("info", None, lambda i: "the info request")
    cache["info"] = (time.monotonic(), data)
    return data


def model_info(task):
    for m in info().get("models", []):
        if m.get("task") == task:
            return m
    return {}


def query_instruction():
    return model_info("embed").get("query_instruction") or DEFAULT_QUERY_INSTRUCTION


# -- items ---------------------------------------------------------------------------------------
def b64(data):
    return base64.b64encode(bytes(data)).decode("ascii")


def _flat(values):
    for v in values:
        if isinstance(v, list):
            for x in v:
                if x is not None:
                    yield x
        elif v is not None:
            yield v


def make_item(texts=(), images=(), videos=()):
    """A JSON item from column values: one joint item, or None when every value is NULL.

    Images: bytea = bytes, text = a path/URI for the service. Video: bytea = a file, bytea[] = its
    frames, text = a path/URI. Same order as the worker's gRPC items: video, images, URIs, texts.
    """
    item = {}
    for v in videos:
        if v is None:
            continue
        if isinstance(v, list):
            item["frames"] = [b64(f) for f in v if f is not None]
        elif isinstance(v, (bytes, bytearray, memoryview)):
            item["video"] = b64(v)
        else:
            item["video_uri"] = str(v)
    raw = [b64(x) for x in _flat(images) if isinstance(x, (bytes, bytearray, memoryview))]
    uris = [str(x) for x in _flat(images) if not isinstance(x, (bytes, bytearray, memoryview))]
    if raw:
        item["image"] = raw
    if uris:
        item["image_uri"] = uris
    texts = [str(t) for t in _flat(texts)]
    if texts:
        item["text"] = texts
    return item or None


def row_item(cfg, row):
    return make_item([row[c] for c in cfg["text_columns"]], [row[c] for c in cfg["image_columns"]],
                     [row[c] for c in cfg["video_columns"]])


# -- embeddings ----------------------------------------------------------------------------------
def vector_text(emb, storage, dims):
    """pgvector's text form ('[...]' or a bit string) of one answer."""
    if "embedding_b64" in emb:
        raw = base64.b64decode(emb["embedding_b64"])
        if storage == "bit":
            return "".join(format(b, "08b") for b in raw)[:dims]
        values = array.array("f")
        values.frombytes(raw)
        if sys.byteorder != "little":
            values.byteswap()
        values = values.tolist()
    else:
        values = emb["embedding"]
    return "[" + ",".join(map(repr, values)) + "]"


def embed_text(item, instruction, dimensions, storage, what):
    payload = {"items": [item if item is not None else {}], "format": "base64",
               "encoding": "binary" if storage == "bit" else "float32"}
    if instruction is not None:
        payload["instruction"] = instruction
    if dimensions is not None:
        payload["dimensions"] = dimensions
    resp = call("embed", payload, what)
    return vector_text(resp["embeddings"][0], storage, resp.get("dimensions"))


def embed_sql(text, image, video, instruction, dimensions, storage):
    item = make_item([text], [image], [video]) or {}
    try:
        return embed_text(item, instruction, dimensions, storage, lambda i: "the input")
    except Failure as f:
        f.raise_sql()


# -- reranking -----------------------------------------------------------------------------------
def rerank_sql(query_item, doc_items, instruction, top_k):
    """(1-based index, score) best first."""
    if query_item is None or not doc_items:
        return []
    payload = {"query": query_item, "documents": [d or {} for d in doc_items]}
    if instruction is not None:
        payload["instruction"] = instruction
    if top_k is not None:
        if top_k < 1:
            return []
        payload["top_k"] = top_k
    try:
        resp = call("rerank", payload, lambda i: "the query" if i is None else "documents[%d]" % (i + 1))
    except Failure as f:
        f.raise_sql()
    return [(r["index"] + 1, r["score"]) for r in resp["ranking"]]


def text_item(value):
    return None if value is None else {"text": [value]}


def image_item(value):
    return None if value is None else {"image": [b64(value)]}


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


def vectorizer_by_name(name):
    rows = plpy.execute(plan("vec_by_name", VECTORIZER_SQL % "v.name = $1", ["text"]), [name])
    if rows.nrows() == 0:
        plpy.error("qvl: no vectorizer named %r" % (name,), hint="See SELECT name FROM qvl.vectorizer_status;",
                   sqlstate="42704")
    return rows[0]


def vectorizer_by_id(vid):
    rows = plpy.execute(plan("vec_by_id", VECTORIZER_SQL % "v.id = $1", ["int4"]), [vid])
    if rows.nrows() == 0:
        plpy.error("qvl: vectorizer %d is gone; its trigger should have been dropped" % vid, sqlstate="42704")
    return rows[0]


def pk_text(cfg, row):
    values = [row[c] for c in cfg["pk_columns"]]
    return str(values[0]) if len(values) == 1 else "(" + ",".join(map(str, values)) + ")"


def enqueue(cfg, row):
    cols = ", ".join(plpy.quote_ident(c) for c in cfg["pk_columns"])
    params = ", ".join("$%d" % (i + 1) for i in range(len(cfg["pk_columns"])))
    query = ("INSERT INTO qvl.queue_%d (%s) VALUES (%s) ON CONFLICT (%s) DO UPDATE "
             "SET claimed_until = NULL, claimed_by = NULL" % (cfg["id"], cols, params, cols))
    plpy.execute(plan(("enqueue", cfg["id"]), query, cfg["pk_types"]), [row[c] for c in cfg["pk_columns"]])
    plpy.execute(plan("notify", "SELECT pg_catalog.pg_notify('qvl_queue', $1)", ["text"]), [str(cfg["id"])])


def sync_trigger(TD):
    """BEFORE INSERT/UPDATE of a 'sync' vectorizer: the vector is in the row when the statement ends."""
    cfg = vectorizer_by_id(int(TD["args"][0]))
    new = TD["new"]
    dest = cfg["destination"]
    item = row_item(cfg, new)
    if item is None:
        new[dest] = None
        return "MODIFY"
    where = "row %s of %s" % (pk_text(cfg, new), cfg["source_sql"])
    try:
        new[dest] = embed_text(item, cfg["instruction"], cfg["dimensions"], cfg["storage"], lambda i: where)
    except Failure as f:
        if cfg["on_error"] != "queue":
            f.hint = (f.hint or "") + (" Or create the vectorizer with on_error => 'queue' to store the row "
                                       "now and embed it later through the worker.")
            f.raise_sql()
        new[dest] = None
        enqueue(cfg, new)
        plpy.notice("qvl: %s queued for the worker: %s" % (where, f.message))
    return "MODIFY"


# -- two-stage search ----------------------------------------------------------------------------
def search_rows(name, query_item, k, candidates, rerank):
    """ANN over the vectorizer's column with the query instruction, then the reranker over the
    candidates' own columns. Runs as the caller: their privileges (and row security) apply."""
    cfg = vectorizer_by_name(name)
    if query_item is None or k is None or k < 1:
        return []
    candidates = max(candidates or 0, k)
    storage, vs, dims = cfg["storage"], cfg["vector_schema"], cfg["dimensions"]
    try:
        qvec = embed_text(query_item, cfg["query_instruction"] or query_instruction(), dims, storage,
                          lambda i: "the query")
    except Failure as f:
        f.raise_sql()
    q = plpy.quote_ident
    dest = "s." + q(cfg["destination"])
    if storage == "bit":
        qtype, op = "bit(%d)" % dims, "OPERATOR(%s.<~>)" % vs
    else:
        qtype, op = "%s.%s(%d)" % (vs, storage, dims), "OPERATOR(%s.<=>)" % vs
    pk = cfg["pk_columns"]
    pk_sql = ("s.%s::text" % q(pk[0])) if len(pk) == 1 else "ROW(%s)::text" % ", ".join("s." + q(c) for c in pk)
    content = list(cfg["text_columns"]) + list(cfg["image_columns"]) + list(cfg["video_columns"])
    cols = "".join(", s.%s" % q(c) for c in content) if rerank else ""
    sql = ("SELECT %s AS qvl_pk, (%s %s $1)::real AS qvl_distance%s FROM %s s WHERE %s IS NOT NULL "
           "ORDER BY %s %s $1 LIMIT $2" % (pk_sql, dest, op, cols, cfg["source_sql"], dest, dest, op))
    p = plan(("search", cfg["id"], dims, bool(rerank)), sql, [qtype, "int8"])
    # HNSW returns at most ef_search rows: widen it to the candidate count for this query only.
    old = plpy.execute("SELECT pg_catalog.current_setting('hnsw.ef_search', true) AS v")[0]["v"]
    want = min(1000, max(40, candidates, int(old) if old and old.isdigit() else 0))
    setter = plan("set_ef", "SELECT pg_catalog.set_config('hnsw.ef_search', $1, true)", ["text"])
    plpy.execute(setter, [str(want)])
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
                    lambda i: "the query" if i is None or i >= rows.nrows() else "row %s" % rows[i]["qvl_pk"])
    except Failure as f:
        f.raise_sql()
    return [(rows[r["index"]]["qvl_pk"], rows[r["index"]]["qvl_distance"], r["score"]) for r in resp["ranking"]]


# PL/Python runs this body as a function: the definitions above are its locals (closures share them).
GD[KEY] = types.SimpleNamespace(**{k: v for k, v in dict(locals()).items() if not k.startswith("__")})
$py$;


-- The one door to the service: reads the address and token as the owner. Returns the HTTP status
-- (0 when unreachable) and body instead of raising, so callers can name the failing item or fall
-- back to the queue. Anyone allowed to embed may call it; it cannot reveal or change the address.
CREATE FUNCTION qvl._call(endpoint text, request text, OUT status int, OUT response text)
LANGUAGE plpython3u VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $py$
lib = GD.get("qvl_lib_1")
if lib is None:
    plpy.execute("SELECT qvl._load()")
    lib = GD["qvl_lib_1"]
return lib.send(endpoint, request)
$py$;


-- The address (and bearer token) of the service; only the installing role may call this.
CREATE FUNCTION qvl.set_service(url text, token text DEFAULT NULL, timeout_s real DEFAULT NULL)
RETURNS void LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
BEGIN
    INSERT INTO qvl.service AS s (singleton, url, token, timeout_s, updated_at)
    VALUES (true, rtrim(url, '/'), token, coalesce(timeout_s, 60), now())
    ON CONFLICT (singleton) DO UPDATE
        SET url = EXCLUDED.url, token = EXCLUDED.token, timeout_s = coalesce(timeout_s, s.timeout_s),
            updated_at = now();
END
$$;
COMMENT ON FUNCTION qvl.set_service(text, text, real) IS 'Point qvl at the model service (installing role only)';


CREATE FUNCTION qvl.service_info() RETURNS jsonb LANGUAGE plpython3u VOLATILE AS $py$
lib = GD.get("qvl_lib_1")
if lib is None:
    plpy.execute("SELECT qvl._load()")
    lib = GD["qvl_lib_1"]
import json
try:
    lib.cache.pop("info", None)
    return json.dumps(lib.info())
except lib.Failure as f:
    f.raise_sql()
$py$;
COMMENT ON FUNCTION qvl.service_info() IS 'The service''s models, sizes and limits (GET /v1/info)';


CREATE FUNCTION qvl.embed(text text DEFAULT NULL, image bytea DEFAULT NULL, video bytea DEFAULT NULL,
                          instruction text DEFAULT NULL, dimensions int DEFAULT NULL)
RETURNS vector LANGUAGE plpython3u VOLATILE AS $py$
lib = GD.get("qvl_lib_1")
if lib is None:
    plpy.execute("SELECT qvl._load()")
    lib = GD["qvl_lib_1"]
return lib.embed_sql(text, image, video, instruction, dimensions, "vector")
$py$;
COMMENT ON FUNCTION qvl.embed(text, bytea, bytea, text, int) IS
    'One embedding of text, an image and/or a video (one joint item); instruction NULL = the service default';


CREATE FUNCTION qvl.embed_halfvec(text text DEFAULT NULL, image bytea DEFAULT NULL, video bytea DEFAULT NULL,
                                  instruction text DEFAULT NULL, dimensions int DEFAULT NULL)
RETURNS halfvec LANGUAGE plpython3u VOLATILE AS $py$
lib = GD.get("qvl_lib_1")
if lib is None:
    plpy.execute("SELECT qvl._load()")
    lib = GD["qvl_lib_1"]
return lib.embed_sql(text, image, video, instruction, dimensions, "halfvec")
$py$;
COMMENT ON FUNCTION qvl.embed_halfvec(text, bytea, bytea, text, int) IS 'qvl.embed as halfvec';


-- Rerank: (1-based position in the array, score) best first; top_k limits the rows.
CREATE FUNCTION qvl.rerank(query text, documents text[], instruction text DEFAULT NULL, top_k int DEFAULT NULL)
RETURNS TABLE(index int, score real) LANGUAGE plpython3u VOLATILE AS $py$
lib = GD.get("qvl_lib_1")
if lib is None:
    plpy.execute("SELECT qvl._load()")
    lib = GD["qvl_lib_1"]
return lib.rerank_sql(lib.text_item(query), [lib.text_item(d) for d in (documents or [])], instruction, top_k)
$py$;

CREATE FUNCTION qvl.rerank(query text, documents bytea[], instruction text DEFAULT NULL, top_k int DEFAULT NULL)
RETURNS TABLE(index int, score real) LANGUAGE plpython3u VOLATILE AS $py$
lib = GD.get("qvl_lib_1")
if lib is None:
    plpy.execute("SELECT qvl._load()")
    lib = GD["qvl_lib_1"]
return lib.rerank_sql(lib.text_item(query), [lib.image_item(d) for d in (documents or [])], instruction, top_k)
$py$;

CREATE FUNCTION qvl.rerank(query bytea, documents text[], instruction text DEFAULT NULL, top_k int DEFAULT NULL)
RETURNS TABLE(index int, score real) LANGUAGE plpython3u VOLATILE AS $py$
lib = GD.get("qvl_lib_1")
if lib is None:
    plpy.execute("SELECT qvl._load()")
    lib = GD["qvl_lib_1"]
return lib.rerank_sql(lib.image_item(query), [lib.text_item(d) for d in (documents or [])], instruction, top_k)
$py$;

CREATE FUNCTION qvl.rerank(query bytea, documents bytea[], instruction text DEFAULT NULL, top_k int DEFAULT NULL)
RETURNS TABLE(index int, score real) LANGUAGE plpython3u VOLATILE AS $py$
lib = GD.get("qvl_lib_1")
if lib is None:
    plpy.execute("SELECT qvl._load()")
    lib = GD["qvl_lib_1"]
return lib.rerank_sql(lib.image_item(query), [lib.image_item(d) for d in (documents or [])], instruction, top_k)
$py$;
