-- qvl 012 (the worker's leftovers, issue 24): rows stored cut. Text past the service's
-- QVL_EMBED_MAX_LENGTH is embedded cut at the end for a vectorizer without text chunking; the worker
-- records each such row here, so qvl.vectorizer_status.cut says how many rows' vectors miss the end
-- of their text (docs/postgres.md, "Text longer than the model takes": the remedy is chunking).
--
--   key     the row's primary key, one text per key column (each cast back to its type to find the row)
--   tokens  the text tokens the service cut
--
-- The worker writes a row's entry with its vector and deletes it when the row is embedded uncut; the
-- count (qvl._cut_count, sql/idempotent/003_vectorizer_api.sql) takes only entries whose table row is
-- still there, so a deleted row, a changed key or TRUNCATE needs no trigger here.

CREATE TABLE qvl.cut_rows (
    vectorizer int NOT NULL REFERENCES qvl.vectorizer (id) ON DELETE CASCADE,
    key text[] NOT NULL,
    tokens int NOT NULL CHECK (tokens > 0),
    cut_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (vectorizer, key)
);
COMMENT ON TABLE qvl.cut_rows IS
    'Rows whose text the service cut to its maximum length when the worker embedded them (qvl.vectorizer_status.cut)';
