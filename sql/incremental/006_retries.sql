-- qvl 006: retries with a backoff per row, claims in queue order, and what workers say about the service.
--
-- Every queue table gets
--   not_before  a row whose embedding failed waits until then (the worker's backoff per row; a new
--               change of the row, qvl.reembed and qvl.retry_failed clear it)
--   last_error  why its last try failed (the row's key and the service's words)
-- and an index on queued_at: workers claim the oldest rows first.
-- New queue tables get the same from qvl._create_queue_tables (sql/idempotent/003_vectorizer_objects.sql).
DO $$
DECLARE
    vid int;
BEGIN
    FOR vid IN SELECT id FROM qvl.vectorizer LOOP
        IF to_regclass(format('qvl.queue_%s', vid)) IS NOT NULL THEN
            EXECUTE format('ALTER TABLE qvl.queue_%s ADD COLUMN IF NOT EXISTS not_before timestamptz, '
                           'ADD COLUMN IF NOT EXISTS last_error text', vid);
            EXECUTE format('CREATE INDEX IF NOT EXISTS queue_%s_queued_at ON qvl.queue_%s (queued_at)', vid, vid);
        END IF;
    END LOOP;
END
$$;

-- One row per running worker: 'paused' with the reason while the service cannot embed (down,
-- misconfigured, failing every item); rows are never failed for that. Written by the workers.
CREATE TABLE qvl.worker_status (
    worker     text PRIMARY KEY,            -- host:pid
    service    text NOT NULL,               -- the gRPC address it uses
    state      text NOT NULL CHECK (state IN ('running', 'paused')),
    reason     text,                        -- why it is paused
    since      timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE qvl.worker_status IS
    'qvl worker processes: paused (with the reason) while the service cannot embed; rows stay queued';
