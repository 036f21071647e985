-- qvl 011: model identity (issue 23 item 2): the function the writers of vectors record the model with.
-- Re-applied by every install once the schema is at version 11 (the columns: sql/incremental/011_*).

-- The model of the vectorizer's vectors: ``fingerprint`` (and its name) when none is recorded yet, else
-- the one recorded, which the caller compares with the model its vectors came from and writes nothing
-- when they differ. Called inside the write's transaction, so the first write and its record commit
-- together; two first writes by two models at once: the second waits for the first and gets its model.
-- SECURITY DEFINER: the worker's role may not update qvl.vectorizer, only record a model where none is.
CREATE OR REPLACE FUNCTION qvl._record_model(vid int, fingerprint text, model text) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    recorded text;
BEGIN
    UPDATE qvl.vectorizer SET model_fingerprint = fingerprint, model_name = model
     WHERE id = vid AND model_fingerprint IS NULL;
    SELECT v.model_fingerprint INTO recorded FROM qvl.vectorizer v WHERE v.id = vid;
    RETURN recorded;
END
$$;


-- The fingerprint of the embedding model that the service of the SQL functions serves now (its
-- /v1/info), NULL when it cannot say (not reachable, or a service older than fingerprints).
CREATE OR REPLACE FUNCTION qvl._served_fingerprint() RETURNS text LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (SELECT nullif(m ->> 'fingerprint', '') FROM jsonb_array_elements(qvl.service_info() -> 'models') AS m
             WHERE m ->> 'task' = 'embed' LIMIT 1);
EXCEPTION WHEN OTHERS THEN  -- (not a cancel: OTHERS leaves query_canceled alone)
    RETURN NULL;
END
$$;


-- qvl.reembed's queueing (version 11): every row queued again, and the served model adopted. Where the
-- vectorizer records a model and the service serves another (or cannot say which), the column is
-- emptied first, so the served model's vectors never sit beside the recorded one's (searches find
-- the rows again as they are written), and the model is forgotten: the next write records the served
-- one. The same model served: the vectors stay until they are written again.
CREATE OR REPLACE FUNCTION qvl._adopt_served_model(vid int) RETURNS bigint LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v qvl.vectorizer;
    adopt boolean;
    n bigint;
BEGIN
    SELECT * INTO STRICT v FROM qvl.vectorizer WHERE id = vid;
    adopt := false;
    IF v.model_fingerprint IS NOT NULL THEN  -- (the service is asked only where a model is recorded)
        adopt := qvl._served_fingerprint() IS DISTINCT FROM v.model_fingerprint;
    END IF;
    IF adopt AND to_jsonb(v) ->> 'chunking' IS NOT NULL THEN  -- a chunked vectorizer (version 13): its chunks go
        PERFORM qvl._as_owner((to_jsonb(v) ->> 'chunk_table')::regclass,
                              format('DELETE FROM %s', (to_jsonb(v) ->> 'chunk_table')::regclass));
    ELSIF adopt THEN
        -- Writing the table runs its owner's code: as the owner (qvl._as_owner). No qvl trigger fires:
        -- they watch the input columns, not the vector.
        PERFORM qvl._as_owner(v.source, format('UPDATE %s SET %I = NULL WHERE %I IS NOT NULL', v.source,
                                               v.destination, v.destination));
    END IF;
    n := qvl._queue_all(vid);
    IF adopt THEN
        -- Last, after the table's rows and the queue's: the order in which a worker's first write
        -- takes them (rows, queue, then qvl._record_model), so the two never wait for each other.
        UPDATE qvl.vectorizer SET model_fingerprint = NULL, model_name = NULL WHERE id = vid;
        PERFORM pg_notify('qvl_config', vid::text);  -- workers read the definition again: held no more
    END IF;
    RETURN n;
END
$$;
