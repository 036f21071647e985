-- qvl 003: vectorizers, the public functions: create, drop, re-embed, retry, the failed rows, the
-- status view and the wait for embeddings.
--
-- Re-applied by every install (sql/idempotent/); one of version 3's four files (their order:
-- 003_vectorizer_objects.sql).

-- Before hybrid search (fulltext) it had 13 parameters; that signature would make calls ambiguous.
-- (Dropped only where it exists: DROP ... IF EXISTS would NOTICE "does not exist, skipping" on
-- every fresh install and re-install.)
-- Before chunking (document_columns, chunking, chunk_context) it had 14, the same.
DO $$ BEGIN
    IF to_regprocedure('qvl.create_vectorizer(regclass, text, text[], text[], text[], name, int, text, text, text, '
                       'text, text, text)') IS NOT NULL THEN
        DROP FUNCTION qvl.create_vectorizer(regclass, text, text[], text[], text[], name, int, text, text, text,
                                            text, text, text);
    END IF;
    IF to_regprocedure('qvl.create_vectorizer(regclass, text, text[], text[], text[], name, int, text, text, text, '
                       'text, text, text, text)') IS NOT NULL THEN
        DROP FUNCTION qvl.create_vectorizer(regclass, text, text[], text[], text[], name, int, text, text, text,
                                            text, text, text, text);
    END IF;
END $$;

CREATE OR REPLACE FUNCTION qvl.create_vectorizer(
    source regclass,
    name text DEFAULT NULL,
    text_columns text[] DEFAULT '{}',
    image_columns text[] DEFAULT '{}',
    video_columns text[] DEFAULT '{}',
    destination name DEFAULT 'embedding',
    dimensions int DEFAULT NULL,
    storage text DEFAULT 'vector',
    instruction text DEFAULT NULL,
    mode text DEFAULT 'async',
    index text DEFAULT 'hnsw',
    on_error text DEFAULT 'fail',
    query_instruction text DEFAULT NULL,
    fulltext text DEFAULT NULL,
    document_columns text[] DEFAULT '{}',
    chunking jsonb DEFAULT NULL,
    chunk_context boolean DEFAULT true
) RETURNS int LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    relname name;
    vname text;
    pk record;
    vtype text;
    new_id int;
    queued bigint;
    model_size int;
    msg text;
    hint text;
BEGIN
    IF chunking IS NOT NULL OR cardinality(document_columns) > 0 THEN
        -- Many vectors per row, in a table of their own (sql/idempotent/013_chunking.sql, version 13).
        IF to_regprocedure('qvl._create_chunked_vectorizer(regclass, text, text[], text[], text[], text[], jsonb, '
                           'boolean, name, int, text, text, text, text, text)') IS NULL THEN
            RAISE EXCEPTION 'qvl: chunking needs qvl schema version 13 or later' USING ERRCODE = '0A000',
                HINT = 'Upgrade: qvl pg install.';
        END IF;
        RETURN qvl._create_chunked_vectorizer(source, name, text_columns, image_columns, video_columns,
                                              document_columns, chunking, chunk_context, destination, dimensions,
                                              storage, instruction, mode, index, query_instruction);
    END IF;
    relname := qvl._check_source(source);
    vname := coalesce(name, relname);
    text_columns := coalesce(text_columns, '{}');
    image_columns := coalesce(image_columns, '{}');
    video_columns := coalesce(video_columns, '{}');
    PERFORM qvl._check_options(storage, mode, index, on_error);
    PERFORM qvl._check_install_allows(mode, dimensions);
    PERFORM qvl._check_new_name(vname);
    PERFORM qvl._check_column_lists(text_columns, image_columns, video_columns, destination);
    PERFORM qvl._check_input_columns(source, text_columns, image_columns, video_columns, mode);
    PERFORM qvl._check_destination_free(source, destination, vname);
    SELECT * INTO pk FROM qvl._primary_key(source);
    PERFORM qvl._check_key_names(source, pk.pk_columns);
    IF dimensions IS NULL THEN
        dimensions := qvl._full_dimensions();
    END IF;
    model_size := qvl._model_dimensions();
    BEGIN
        vtype := qvl._vector_type(storage, dimensions, index);
    EXCEPTION WHEN program_limit_exceeded THEN  -- pgvector's limits: say what the model gives too
        GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, hint = PG_EXCEPTION_HINT;
        RAISE EXCEPTION '%', msg || coalesce(format(' (the service''s embedding model gives %s)', model_size), '')
            USING ERRCODE = '54000', HINT = hint;
    END;
    PERFORM qvl._ensure_destination(source, destination, vtype);
    PERFORM qvl._check_dimensions(dimensions, model_size);

    INSERT INTO qvl.vectorizer (name, source, pk_columns, pk_types, text_columns, image_columns, video_columns,
                                destination, dimensions, storage, instruction, query_instruction, mode, on_error,
                                index_kind)
    VALUES (vname, source, pk.pk_columns, pk.pk_types, text_columns, image_columns, video_columns, destination,
            dimensions, storage, instruction, query_instruction, mode, on_error, index)
    RETURNING id INTO new_id;
    PERFORM qvl._install_objects(new_id);
    PERFORM qvl._create_index(new_id);
    IF fulltext IS NOT NULL THEN  -- hybrid search's full-text index (sql/idempotent/008_hybrid_search.sql)
        PERFORM qvl.set_fulltext(vname, fulltext);
    END IF;
    queued := qvl._queue_all(new_id);  -- backfill: existing rows go to the worker
    PERFORM pg_notify('qvl_config', new_id::text);
    IF queued > 0 THEN
        RAISE NOTICE 'qvl: vectorizer % created; % existing rows queued for the worker (qvl worker)', vname, queued;
    END IF;
    RETURN new_id;
END
$$;
COMMENT ON FUNCTION qvl.create_vectorizer(regclass, text, text[], text[], text[], name, int, text, text, text, text,
                                          text, text, text, text[], jsonb, boolean) IS
    'Keep a vector column in step with text/image/video columns of a table (one joint item per row); with '
    'chunking, a table of vectors per page, window or passage';


CREATE OR REPLACE FUNCTION qvl._vectorizer(vname text) RETURNS qvl.vectorizer LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v qvl.vectorizer;
BEGIN
    SELECT * INTO v FROM qvl.vectorizer WHERE name = vname;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'qvl: no vectorizer named %', vname USING ERRCODE = '42704',
            HINT = 'See SELECT name FROM qvl.vectorizer_status;';
    END IF;
    RETURN v;
END
$$;


-- Once dropped, nothing keeps the column in step with the row. Rows still queued (changed since
-- their vector was written) or failed (their last embedding refused) hold a vector of what they
-- were: those are cleared, so no vector stays that no vectorizer vouches for; a NOTICE says how
-- many vectors the column keeps. Only objects that exist are dropped (no "skipping" NOTICEs).
CREATE OR REPLACE FUNCTION qvl.drop_vectorizer(name text, drop_column boolean DEFAULT false) RETURNS boolean
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    v qvl.vectorizer := qvl._vectorizer(name);
    source_exists boolean := EXISTS (SELECT 1 FROM pg_class WHERE oid = v.source);
    chunks regclass := qvl._chunk_table(v);  -- a chunked vectorizer's table (version 13)
    has_column boolean;
    stale text[] := '{}';
    tbl text;
    tables oid[];
    tids tid[];
    cleared bigint := 0;
    kept bigint;
BEGIN
    IF to_regprocedure('qvl._drop_shadow_of(qvl.vectorizer, boolean)') IS NOT NULL THEN
        PERFORM qvl._drop_shadow_of(v, drop_column AND source_exists);  -- version 14: a blue/green shadow first
    END IF;
    IF source_exists THEN
        PERFORM qvl._drop_triggers(v.id, v.source);
        PERFORM qvl._revoke_worker(v);
        IF to_regprocedure('qvl.set_fulltext(text, text)') IS NOT NULL THEN  -- version 8: its full-text index
            PERFORM qvl.set_fulltext(v.name, NULL);
        END IF;
        has_column := chunks IS NULL AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = v.source
                                 AND a.attname = v.destination AND a.attnum > 0 AND NOT a.attisdropped);
        IF chunks IS NOT NULL AND NOT drop_column THEN
            -- As for a column: the chunks of rows still queued or failed no longer match their rows.
            cleared := qvl._as_owner(chunks, format(
                'DELETE FROM %s c WHERE EXISTS (SELECT 1 FROM qvl.queue_%s q WHERE %s) '
                'OR EXISTS (SELECT 1 FROM qvl.failed_%s q WHERE %s)', chunks, v.id,
                (SELECT string_agg(format('q.%1$I = c.%1$I', c), ' AND ') FROM unnest(v.pk_columns) AS c), v.id,
                (SELECT string_agg(format('q.%1$I = c.%1$I', c), ' AND ') FROM unnest(v.pk_columns) AS c)));
            EXECUTE format('SELECT count(*) FROM %s', chunks) INTO kept;
        END IF;
        IF has_column AND NOT drop_column THEN
            FOREACH tbl IN ARRAY ARRAY[format('qvl.queue_%s', v.id), format('qvl.failed_%s', v.id)] LOOP
                IF to_regclass(tbl) IS NOT NULL THEN
                    stale := stale || format('EXISTS (SELECT 1 FROM %s q WHERE %s)', tbl,
                        (SELECT string_agg(format('q.%1$I = s.%1$I', c), ' AND ') FROM unnest(v.pk_columns) AS c));
                END IF;
            END LOOP;
            IF cardinality(stale) > 0 THEN
                -- Which rows: read as the caller (a read runs none of the owner's code), while writers
                -- wait. The write runs the owner's code (triggers, CHECK, index expressions): as the owner.
                EXECUTE format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', v.source);
                EXECUTE format('SELECT array_agg(s.tableoid), array_agg(s.ctid) FROM %s s WHERE s.%I IS NOT NULL '
                               'AND (%s)', v.source, v.destination, array_to_string(stale, ' OR ')) INTO tables, tids;
                IF tids IS NOT NULL THEN
                    cleared := qvl._as_owner(v.source, format(
                        'UPDATE %s s SET %I = NULL WHERE s.ctid = ANY ($2) AND (s.tableoid, s.ctid) IN '
                        '(SELECT * FROM unnest($1, $2))', v.source, v.destination), tables, tids);
                END IF;
            END IF;
            EXECUTE format('SELECT count(*) FROM %s WHERE %I IS NOT NULL', v.source, v.destination) INTO kept;
        END IF;
    END IF;
    PERFORM qvl._drop_enqueue_function(v.id);
    FOREACH tbl IN ARRAY ARRAY[format('qvl.queue_%s', v.id), format('qvl.failed_%s', v.id)] LOOP
        IF to_regclass(tbl) IS NOT NULL THEN
            EXECUTE format('DROP TABLE %s', tbl);
        END IF;
    END LOOP;
    DELETE FROM qvl.vectorizer WHERE id = v.id;
    -- After the catalog row is gone: qvl's schema guard (sql/idempotent/007_*) refuses to drop a
    -- column a vectorizer still writes.
    IF has_column AND drop_column THEN
        PERFORM qvl._as_owner(v.source, format('ALTER TABLE %s DROP COLUMN %I', v.source, v.destination));
    END IF;
    IF chunks IS NOT NULL AND drop_column THEN  -- a chunked vectorizer's table and view go
        IF EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = (to_jsonb(v) ->> 'chunk_view')::regclass) THEN
            EXECUTE format('DROP VIEW %s', (to_jsonb(v) ->> 'chunk_view')::regclass);
        END IF;
        EXECUTE format('DROP TABLE %s', chunks);
    END IF;
    PERFORM pg_notify('qvl_config', v.id::text);
    IF kept IS NOT NULL AND chunks IS NOT NULL THEN
        RAISE NOTICE 'qvl: vectorizer % dropped; % keeps % chunks, no longer updated when their rows change',
                v.name, chunks, kept
            USING DETAIL = format('%s chunks of rows still queued or failed were deleted: they no longer matched '
                                  'their rows.', cleared),
                  HINT = format('To remove the rest: DROP TABLE %s CASCADE (what drop_column => true does).', chunks);
    ELSIF kept IS NOT NULL THEN
        RAISE NOTICE 'qvl: vectorizer % dropped; %.% keeps % vectors, no longer updated when their rows change',
                v.name, v.source, v.destination, kept
            USING DETAIL = format('%s vectors of rows still queued or failed were cleared: they no longer matched '
                                  'their rows.', cleared),
                  HINT = format('To remove the rest: ALTER TABLE %s DROP COLUMN %I (what drop_column => true does). '
                                'A new vectorizer on the column embeds every row again.', v.source, v.destination);
    END IF;
    RETURN true;
END
$$;
COMMENT ON FUNCTION qvl.drop_vectorizer(text, boolean) IS
    'Remove a vectorizer (its triggers and queue); the vectors stay (but those of rows still queued or failed) '
    'unless drop_column';


-- Re-queue every row (after a model change), optionally at a new size: the column is retyped and
-- emptied, the index rebuilt, and the worker fills it again. From version 11 it adopts the served
-- model (qvl._adopt_served_model: another model's vectors are emptied first, the recorded model cleared).
CREATE OR REPLACE FUNCTION qvl.reembed(name text, dimensions int DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    v qvl.vectorizer := qvl._vectorizer(name);
    vtype text;
BEGIN
    -- (A chunked vectorizer, version 13; read through to_jsonb, and without a helper: a role granted
    -- EXECUTE on qvl.reembed alone may run it.)
    IF dimensions IS NOT NULL AND dimensions <> v.dimensions AND to_jsonb(v) ->> 'chunking' IS NOT NULL THEN
        RAISE EXCEPTION 'qvl: vectorizer % keeps chunks in %: its size cannot change in place', v.name,
                to_jsonb(v) ->> 'chunk_table' USING ERRCODE = '0A000',
            HINT = 'Drop it (SELECT qvl.drop_vectorizer(name, drop_column => true)) and create it again with the '
                   'new dimensions.';
    END IF;
    IF dimensions IS NOT NULL AND dimensions <> v.dimensions THEN
        PERFORM qvl._check_dimensions(dimensions, qvl._model_dimensions());
        vtype := qvl._vector_type(v.storage, dimensions, v.index_kind);
        -- The catalog first: qvl's schema guard (sql/idempotent/007_*) checks the column against it.
        UPDATE qvl.vectorizer SET dimensions = reembed.dimensions WHERE id = v.id;
        -- Retyping rewrites the table and checks its constraints again: as its owner (qvl._as_owner).
        PERFORM qvl._as_owner(v.source, format('ALTER TABLE %s ALTER COLUMN %I TYPE %s USING NULL', v.source,
                                               v.destination, vtype));
        PERFORM pg_notify('qvl_config', v.id::text);
    END IF;
    EXECUTE format('DELETE FROM qvl.failed_%s', v.id);
    IF to_regprocedure('qvl._adopt_served_model(integer)') IS NOT NULL THEN  -- version 11: model identity
        RETURN qvl._adopt_served_model(v.id);
    END IF;
    RETURN qvl._queue_all(v.id);
END
$$;


CREATE OR REPLACE FUNCTION qvl.retry_failed(name text) RETURNS bigint LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    v qvl.vectorizer := qvl._vectorizer(name);
    cols text;
    n bigint;
BEGIN
    SELECT string_agg(format('%I', c), ', ') INTO cols FROM unnest(v.pk_columns) AS c;
    EXECUTE format('WITH f AS (DELETE FROM qvl.failed_%1$s RETURNING %2$s) '
                   'INSERT INTO qvl.queue_%1$s (%2$s) SELECT %2$s FROM f ON CONFLICT (%2$s) DO UPDATE '
                   'SET claimed_until = NULL, claimed_by = NULL, not_before = NULL, attempts = 0, last_error = NULL',
                   v.id, cols);
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM pg_notify('qvl_queue', v.id::text);
    RETURN n;
END
$$;


CREATE OR REPLACE FUNCTION qvl.failed_items(name text)
RETURNS TABLE(pk text, error text, code text, attempts int, failed_at timestamptz)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    v qvl.vectorizer := qvl._vectorizer(name);
BEGIN
    RETURN QUERY EXECUTE format('SELECT %s, f.error, f.code, f.attempts, f.failed_at FROM qvl.failed_%s f '
                                'ORDER BY f.failed_at', qvl._pk_text_sql(v.pk_columns, 'f.'), v.id);
END
$$;


-- Counts only (no content), and only to roles that may read the vectorizer's table: how many rows
-- wait and since when says how a table is written to.
CREATE OR REPLACE FUNCTION qvl._queue_stats(vid int, OUT pending bigint, OUT in_progress bigint, OUT failed bigint,
                                            OUT oldest_pending_age interval)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF to_regclass(format('qvl.queue_%s', vid)) IS NULL OR NOT qvl._may_read_source(vid) THEN
        RETURN;
    END IF;
    EXECUTE format('SELECT count(*), count(*) FILTER (WHERE claimed_by IS NOT NULL AND claimed_until > now()), '
                   'now() - min(queued_at) FROM qvl.queue_%s', vid) INTO pending, in_progress, oldest_pending_age;
    EXECUTE format('SELECT count(*) FROM qvl.failed_%s', vid) INTO failed;
END
$$;


-- Rows whose vector was made from text the service cut to its maximum length (qvl.cut_rows, version
-- 12; NULL before, and for roles that may not read the table, as the other counts). Entries of rows
-- deleted since go at the worker's next pruning (qvl.prune_failed).
CREATE OR REPLACE FUNCTION qvl._cut_count(vid int) RETURNS bigint
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n bigint;
BEGIN
    IF to_regclass('qvl.cut_rows') IS NULL OR NOT qvl._may_read_source(vid) THEN
        RETURN NULL;
    END IF;
    EXECUTE 'SELECT count(*) FROM qvl.cut_rows WHERE vectorizer = $1' INTO n USING vid;
    RETURN n;
END
$$;


-- A blue/green shadow (version 14; no rows before, and without one): being filled, or the old side a
-- switch left (kept current while its queue is there): its column (chunk table), rows embedded there of
-- the table's rows (counted from qvl._shadow_count's deltas, not the table, where there are some), its
-- failed rows and its model. Counts only to roles that may
-- read the table, as _queue_stats. Dynamic SQL: the same function at every version.
CREATE OR REPLACE FUNCTION qvl._shadow_stats(vid int, OUT shadow_column name, OUT shadow_done bigint,
                                             OUT shadow_total bigint, OUT shadow_failed bigint,
                                             OUT shadow_model_name text, OUT shadow_model_fingerprint text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pending bigint;
BEGIN
    IF to_regclass('qvl.shadow') IS NULL OR to_regclass(format('qvl.shadow_queue_%s', vid)) IS NULL THEN
        RETURN;
    END IF;
    EXECUTE 'SELECT destination, model_name, model_fingerprint FROM qvl.shadow WHERE vectorizer_id = $1 '
            'AND to_regclass(format(''qvl.shadow_queue_%s'', vectorizer_id)) IS NOT NULL' INTO shadow_column, shadow_model_name, shadow_model_fingerprint USING vid;
    IF shadow_column IS NULL OR NOT qvl._may_read_source(vid) THEN
        RETURN;
    END IF;
    EXECUTE format('SELECT count(*) FROM qvl.shadow_queue_%s', vid) INTO pending;
    EXECUTE format('SELECT count(*) FROM qvl.shadow_failed_%s', vid) INTO shadow_failed;
    IF to_regclass(format('qvl.shadow_rows_%s', vid)) IS NOT NULL THEN  -- the row count's deltas (version 15)
        EXECUTE format('SELECT coalesce(sum(delta), 0) FROM qvl.shadow_rows_%s', vid) INTO shadow_total;
    ELSE
        EXECUTE format('SELECT count(*) FROM %s', (SELECT v.source FROM qvl.vectorizer v WHERE v.id = vid))
           INTO shadow_total;
    END IF;
    shadow_done := shadow_total - pending - shadow_failed;
END
$$;


-- model_name, model_fingerprint: the model the vectors came from (version 11; read through to_jsonb, so
-- the view is the same at every version, NULL before). cut: rows embedded from cut text (version 12).
-- shadow_*: a blue/green shadow being filled (version 14, qvl._shadow_stats). New columns go last:
-- CREATE OR REPLACE VIEW may only append.
CREATE OR REPLACE VIEW qvl.vectorizer_status AS
SELECT v.name, v.source, v.mode, v.storage, v.dimensions, v.destination,
       s.pending, s.in_progress, s.failed, s.oldest_pending_age,
       to_jsonb(v) ->> 'model_name' AS model_name, to_jsonb(v) ->> 'model_fingerprint' AS model_fingerprint,
       qvl._cut_count(v.id) AS cut,
       sh.shadow_column, sh.shadow_done, sh.shadow_total, sh.shadow_failed, sh.shadow_model_name,
       sh.shadow_model_fingerprint
  FROM qvl.vectorizer v CROSS JOIN LATERAL qvl._queue_stats(v.id) AS s
  LEFT JOIN LATERAL qvl._shadow_stats(v.id) AS sh ON true;
COMMENT ON VIEW qvl.vectorizer_status IS
    'pending: rows waiting for (or being embedded by) the worker; failed: rows the service refused '
    '(counts NULL unless you may read the table); model_*: the model the vectors came from; cut: rows '
    'embedded from text cut to the service''s maximum length (chunk the text instead: docs/postgres.md); '
    'shadow_*: a blue/green shadow column being filled (qvl.reembed(name, service, shadow)): rows done of '
    'total, its model';


-- Read-your-writes: true once every committed change of the vectorizer's table is embedded (or
-- failed), false at the timeout. Call it after COMMIT, in READ COMMITTED.
CREATE OR REPLACE FUNCTION qvl.wait_for_embeddings(vectorizer text, timeout interval DEFAULT '30 seconds')
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    vid int;
    deadline timestamptz := clock_timestamp() + timeout;
    nap float8 := 0.005;
    busy boolean;
BEGIN
    SELECT v.id INTO vid FROM qvl.vectorizer v WHERE v.name = vectorizer;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'qvl: no vectorizer named %', vectorizer USING ERRCODE = '42704';
    END IF;
    IF NOT qvl._may_read_source(vid) THEN
        RAISE EXCEPTION 'qvl: permission denied to wait for vectorizer %', vectorizer USING ERRCODE = '42501',
            HINT = 'Waiting needs SELECT on its table.';
    END IF;
    LOOP
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM qvl.queue_%s)', vid) INTO busy;
        IF NOT busy THEN
            RETURN true;
        END IF;
        IF clock_timestamp() >= deadline THEN
            RETURN false;
        END IF;
        PERFORM pg_sleep(least(nap, greatest(0.001, extract(epoch FROM deadline - clock_timestamp()))));
        nap := least(nap * 2, 0.1);
    END LOOP;
END
$$;
