-- qvl 014: blue/green model upgrades (issue 23 item 3; docs/model-upgrades.md). A second model fills a
-- shadow column from its own service while queries keep the vectorizer's column, service and model; one
-- call (qvl.switch_vectorizer) swaps them.
--
--   qvl.vectorizer.service_url  the service the vectorizer's SQL functions ask (NULL: qvl.service's); a
--                               switch sets it to the shadow's.
--   qvl.shadow                  one row per vectorizer with a second column: state 'filling' (the shadow
--                               being embedded, its rows queued in qvl.shadow_queue_<id>) or 'retired'
--                               (the column a switch left behind, kept until qvl.drop_old_column).
-- The functions are in sql/idempotent/014_blue_green.sql.

ALTER TABLE qvl.vectorizer ADD COLUMN service_url text;
COMMENT ON COLUMN qvl.vectorizer.service_url IS
    'The service the vectorizer''s queries ask (NULL: qvl.service); set by qvl.switch_vectorizer';

CREATE TABLE qvl.shadow (
    vectorizer_id int PRIMARY KEY REFERENCES qvl.vectorizer (id) ON DELETE CASCADE,
    state text NOT NULL CHECK (state IN ('filling', 'retired')),
    destination name NOT NULL,
    dimensions int NOT NULL,
    service_url text,
    model_fingerprint text CHECK (model_fingerprint ~ '^[0-9a-f]{16}$'),
    model_name text,
    total bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE qvl.shadow IS
    'A vectorizer''s second column: being filled by another model (qvl.reembed(name, service, into)) or '
    'left behind by qvl.switch_vectorizer until qvl.drop_old_column';
