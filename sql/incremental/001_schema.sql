-- qvl 001: the schema, its version table, the service address and the vectorizer catalog.
--
-- Applied by `qvl pg install` (connectors/postgres/installer.py) inside one transaction, after
-- `CREATE EXTENSION vector` and `CREATE EXTENSION plpython3u`, with the vector extension's
-- schema on the search_path. Each file of sql/incremental/ runs once, in order; its number is
-- recorded in qvl.schema_version. Tables, types and one-time data changes go here; functions,
-- views and grants go to sql/idempotent/, which every install applies again.

CREATE SCHEMA IF NOT EXISTS qvl;
COMMENT ON SCHEMA qvl IS 'qvl: Qwen3-VL embeddings and reranking inside Postgres';

-- Functions the installing role creates here are private until qvl._apply_grants opens the
-- query functions to PUBLIC: managing vectorizers and the service address stays with the owner.
ALTER DEFAULT PRIVILEGES IN SCHEMA qvl REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;

CREATE TABLE IF NOT EXISTS qvl.schema_version (
    version    int PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- Install options the installer re-applies on upgrades (e.g. public_grant).
CREATE TABLE qvl.config (
    key   text PRIMARY KEY,
    value text NOT NULL
);

-- Where the model service is. A table, not a GUC: any session may SET a GUC, and that would let
-- any user point the database (and the token) at a host of their choosing. Nobody but the owner
-- reads it; the functions that call the service read it as SECURITY DEFINER (qvl._call).
CREATE TABLE qvl.service (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    url        text NOT NULL CHECK (url ~ '^https?://[^/]+'),
    token      text,
    timeout_s  real NOT NULL DEFAULT 60 CHECK (timeout_s > 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON qvl.service FROM PUBLIC;
INSERT INTO qvl.service (url) VALUES ('http://127.0.0.1:8080');

-- One row per vectorizer: which columns of which table form the item, and where the vector goes.
CREATE TABLE qvl.vectorizer (
    id                int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name              text NOT NULL UNIQUE,
    source            regclass NOT NULL,
    pk_columns        name[] NOT NULL,
    pk_types          text[] NOT NULL,
    text_columns      name[] NOT NULL DEFAULT '{}',
    image_columns     name[] NOT NULL DEFAULT '{}',
    video_columns     name[] NOT NULL DEFAULT '{}',
    destination       name NOT NULL,
    dimensions        int NOT NULL CHECK (dimensions > 0),
    storage           text NOT NULL CHECK (storage IN ('vector', 'halfvec', 'bit')),
    instruction       text,
    query_instruction text,
    mode              text NOT NULL CHECK (mode IN ('async', 'sync')),
    on_error          text NOT NULL CHECK (on_error IN ('fail', 'queue')),
    index_kind        text NOT NULL CHECK (index_kind IN ('hnsw', 'none')),
    created_at        timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE qvl.vectorizer IS
    'Vectorizers made by qvl.create_vectorizer; queue rows live in qvl.queue_<id>, failures in qvl.failed_<id>';
