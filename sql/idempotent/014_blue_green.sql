-- qvl 014: blue/green model upgrades (issue 23 item 3; docs/model-upgrades.md). Re-applied by every
-- install once the schema is at version 14 (the table and column: sql/incremental/014_blue_green.sql).
--
--   qvl.reembed(name, service, shadow)  a shadow column of the new model's size (a chunked vectorizer: a
--                                       shadow chunk table and its view, version 15), its rows queued in
--                                       qvl.shadow_queue_<id>; `qvl worker --shadow` fills it from the new
--                                       service while queries keep the vectorizer's column and service
-- The switch, the way back and the drops: sql/idempotent/014_blue_green_switch.sql.

-- The service at ``url``: its GET /v1/info (with qvl.service's token). As the owner: it reads qvl.service.
CREATE OR REPLACE FUNCTION qvl._service_info_at(url text) RETURNS jsonb
LANGUAGE plpython3u VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $py$
# qvl:prologue
return lib.service_info_at_sql(url)
$py$;


-- qvl._call to the vectorizer's own service (qvl.vectorizer.service_url, set by a switch; NULL:
-- qvl.service's). Takes the vectorizer, never an address: a caller cannot point it elsewhere.
CREATE OR REPLACE FUNCTION qvl._call_for(vid int, endpoint text, request text, OUT status int, OUT response text)
LANGUAGE plpython3u VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $py$
# qvl:prologue
return lib.send(endpoint, request, vid)
$py$;


-- The shadow's queue trigger: a row inserted, its input changed or its key changed while the shadow
-- fills is queued for the shadow too (the vectorizer's own triggers queue it for the live column).
-- TG_ARGV: the vectorizer's id, then its key columns. Dynamic SQL: it runs only during an upgrade.
CREATE OR REPLACE FUNCTION qvl._enqueue_shadow() RETURNS trigger LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cols text;
    vals text;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        EXECUTE format('DELETE FROM qvl.shadow_queue_%s', TG_ARGV[0]);
        EXECUTE format('DELETE FROM qvl.shadow_failed_%s', TG_ARGV[0]);
        IF to_regclass(format('qvl.shadow_rows_%s', TG_ARGV[0])) IS NOT NULL THEN  -- the table's row count: 0
            EXECUTE format('DELETE FROM qvl.shadow_rows_%s', TG_ARGV[0]);
        END IF;
        RETURN NULL;
    END IF;
    SELECT string_agg(format('%I', c), ', '), string_agg(format('($1).%I', c), ', ')
      INTO cols, vals FROM unnest(TG_ARGV[1:]) AS c;
    EXECUTE format('INSERT INTO qvl.shadow_queue_%s (%s) SELECT %s ON CONFLICT (%s) DO UPDATE SET '
                   'claimed_until = NULL, claimed_by = NULL, not_before = NULL, attempts = 0, last_error = NULL',
                   TG_ARGV[0], cols, vals, cols) USING NEW;
    PERFORM pg_notify('qvl_queue', TG_ARGV[0]);
    RETURN NULL;
END
$$;


-- A chunked vectorizer's shadow chunk table follows its rows (as the live one does, through
-- qvl._enqueue_<id>): a deleted row's chunks go, a key change's old key's, TRUNCATE's all. The old key is
-- queued first: that waits for a shadow worker writing this row's chunks now (it holds the queue row)
-- and takes the row from it, so the DELETE below, a new snapshot, sees what it wrote; the worker then
-- forgets the entry (its row is gone). TG_ARGV: the vectorizer's id, the chunk table, its key columns.
CREATE OR REPLACE FUNCTION qvl._shadow_chunks_gone() RETURNS trigger LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cols text;
    vals text;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        EXECUTE format('DELETE FROM %s', TG_ARGV[1]);
        RETURN NULL;
    END IF;
    SELECT string_agg(format('%I', c), ', '), string_agg(format('($1).%I', c), ', ')
      INTO cols, vals FROM unnest(TG_ARGV[2:]) AS c;
    EXECUTE format('INSERT INTO qvl.shadow_queue_%s (%s) SELECT %s ON CONFLICT (%s) DO UPDATE SET '
                   'claimed_until = NULL, claimed_by = NULL, not_before = NULL, attempts = 0, last_error = NULL',
                   TG_ARGV[0], cols, vals, cols) USING OLD;
    EXECUTE format('DELETE FROM %s WHERE (%s) = (SELECT %s)', TG_ARGV[1], cols, vals) USING OLD;
    RETURN NULL;
END
$$;


-- The table's row count while it has a shadow, for the status's shadow_total without counting the table
-- at every read: qvl.shadow_rows_<id> holds deltas (the rows at the start, then +n per INSERT statement,
-- -n per DELETE; TRUNCATE empties it in qvl._enqueue_shadow) that sum to the count. Writers only append
-- (no row every writer updates, so none waits for another); now and then (1 statement in 200) one of them
-- folds the deltas into one row, so a status read sums few. TG_ARGV: the vectorizer's id.
CREATE OR REPLACE FUNCTION qvl._shadow_count() RETURNS trigger LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    EXECUTE format('INSERT INTO qvl.shadow_rows_%s (delta) SELECT n FROM (SELECT %s count(*) AS n FROM qvl_rows) c '
                   'WHERE n <> 0', TG_ARGV[0], CASE TG_OP WHEN 'DELETE' THEN '-' ELSE '' END);
    IF random() < 0.005 AND pg_try_advisory_xact_lock(7124, TG_ARGV[0]::int) THEN
        EXECUTE format('WITH d AS (DELETE FROM qvl.shadow_rows_%1$s RETURNING delta) '
                       'INSERT INTO qvl.shadow_rows_%1$s (delta) SELECT coalesce(sum(delta), 0) FROM d', TG_ARGV[0]);
    END IF;
    RETURN NULL;
END
$$;


-- insert, update, key: queue the row for the shadow; truncate: its queue emptied; and a chunked
-- vectorizer's shadow chunk table's: delete, rekey, chunks_truncate (qvl._shadow_chunks_gone); the table's
-- row count: count_insert, count_delete (qvl._shadow_count).
CREATE OR REPLACE FUNCTION qvl._shadow_trigger_names(vid int) RETURNS name[] LANGUAGE sql IMMUTABLE AS $$
    SELECT ARRAY[format('qvl_%s_shadow_insert', vid), format('qvl_%s_shadow_update', vid),
                 format('qvl_%s_shadow_key', vid), format('qvl_%s_shadow_truncate', vid),
                 format('qvl_%s_shadow_delete', vid), format('qvl_%s_shadow_rekey', vid),
                 format('qvl_%s_shadow_chunks_truncate', vid), format('qvl_%s_shadow_count_insert', vid),
                 format('qvl_%s_shadow_count_delete', vid)]::name[]
$$;


-- The shadow's queue and failed tables (the vectorizer's own, copied), and the rights of the worker and
-- the trigger role on them; for a shadow column, the worker's right to write it.
CREATE OR REPLACE FUNCTION qvl._create_shadow_objects(v qvl.vectorizer, shadow name, chunks regclass)
RETURNS void LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    EXECUTE format('CREATE TABLE qvl.shadow_queue_%s (LIKE qvl.queue_%s INCLUDING ALL) '
                   'WITH (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 500)', v.id, v.id);
    EXECUTE format('CREATE TABLE qvl.shadow_failed_%s (LIKE qvl.failed_%s INCLUDING ALL)', v.id, v.id);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON qvl.shadow_queue_%s TO qvl_trigger', v.id);
    EXECUTE format('GRANT SELECT, DELETE ON qvl.shadow_failed_%s TO qvl_trigger', v.id);
    PERFORM qvl._ensure_worker_role();
    EXECUTE format('GRANT SELECT, UPDATE, DELETE ON qvl.shadow_queue_%s TO qvl_worker', v.id);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON qvl.shadow_failed_%s TO qvl_worker', v.id);
    IF chunks IS NULL THEN
        EXECUTE format('GRANT UPDATE (%I) ON %s TO qvl_worker', shadow, v.source);
    END IF;
    -- The row count's deltas (qvl._shadow_count), where statement triggers may see the rows written: not
    -- on a partition or an inheritance child (Postgres refuses transition tables there; the status then
    -- counts the table).
    IF NOT EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = v.source) THEN
        EXECUTE format('CREATE TABLE qvl.shadow_rows_%s (delta bigint NOT NULL)', v.id);
        EXECUTE format('GRANT SELECT, INSERT, DELETE ON qvl.shadow_rows_%s TO qvl_trigger', v.id);
    END IF;
    PERFORM qvl._create_shadow_triggers(v, chunks);
END
$$;


-- The shadow's triggers on the table: its rows queued for the shadow; ``chunks`` (a chunked vectorizer's
-- shadow chunk table, NULL for a column): its chunks follow their rows. A switch makes them again for
-- the other chunk table (sql/idempotent/014_blue_green_switch.sql).
CREATE OR REPLACE FUNCTION qvl._create_shadow_triggers(v qvl.vectorizer, chunks regclass) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    names name[] := qvl._shadow_trigger_names(v.id);
    args text := (SELECT string_agg(format('%L', c), ', ') FROM unnest(v.pk_columns) AS c);
    watched text;
    changed text;
BEGIN
    SELECT string_agg(format('%I', c), ', '), string_agg(format('OLD.%1$I IS DISTINCT FROM NEW.%1$I', c), ' OR ')
      INTO watched, changed
      FROM unnest(v.text_columns || v.image_columns || v.video_columns || qvl._document_columns(v)) AS c;
    EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %s FOR EACH ROW EXECUTE FUNCTION qvl._enqueue_shadow(%L, %s)',
                   names[1], v.source, v.id, args);
    EXECUTE format('CREATE TRIGGER %I AFTER UPDATE OF %s ON %s FOR EACH ROW WHEN (%s) '
                   'EXECUTE FUNCTION qvl._enqueue_shadow(%L, %s)', names[2], watched, v.source, changed, v.id, args);
    EXECUTE format('CREATE TRIGGER %I AFTER UPDATE ON %s FOR EACH ROW WHEN (qvl._key_changed_%s(OLD, NEW)) '
                   'EXECUTE FUNCTION qvl._enqueue_shadow(%L, %s)', names[3], v.source, v.id, v.id, args);
    EXECUTE format('CREATE TRIGGER %I AFTER TRUNCATE ON %s FOR EACH STATEMENT '
                   'EXECUTE FUNCTION qvl._enqueue_shadow(%L)', names[4], v.source, v.id);
    IF chunks IS NOT NULL THEN
        EXECUTE format('CREATE TRIGGER %I AFTER DELETE ON %s FOR EACH ROW '
                       'EXECUTE FUNCTION qvl._shadow_chunks_gone(%L, %L, %s)', names[5], v.source, v.id, chunks, args);
        EXECUTE format('CREATE TRIGGER %I AFTER UPDATE ON %s FOR EACH ROW WHEN (qvl._key_changed_%s(OLD, NEW)) '
                       'EXECUTE FUNCTION qvl._shadow_chunks_gone(%L, %L, %s)', names[6], v.source, v.id, v.id,
                       chunks, args);
        EXECUTE format('CREATE TRIGGER %I AFTER TRUNCATE ON %s FOR EACH STATEMENT '
                       'EXECUTE FUNCTION qvl._shadow_chunks_gone(%L, %L)', names[7], v.source, v.id, chunks);
        EXECUTE format('GRANT SELECT, DELETE ON %s TO qvl_trigger', chunks);
    END IF;
    IF to_regclass(format('qvl.shadow_rows_%s', v.id)) IS NOT NULL THEN
        EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %s REFERENCING NEW TABLE AS qvl_rows FOR EACH STATEMENT '
                       'EXECUTE FUNCTION qvl._shadow_count(%L)', names[8], v.source, v.id);
        EXECUTE format('CREATE TRIGGER %I AFTER DELETE ON %s REFERENCING OLD TABLE AS qvl_rows FOR EACH STATEMENT '
                       'EXECUTE FUNCTION qvl._shadow_count(%L)', names[9], v.source, v.id);
    END IF;
    EXECUTE format('ALTER TABLE %s ', v.source)
            || (SELECT string_agg(format('ENABLE ALWAYS TRIGGER %I', n), ', ') FROM unnest(names) AS n
                 WHERE EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = v.source AND t.tgname = n));
END
$$;


CREATE OR REPLACE FUNCTION qvl._drop_shadow_triggers(v qvl.vectorizer) RETURNS void LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    trig name;
BEGIN
    FOREACH trig IN ARRAY qvl._shadow_trigger_names(v.id) LOOP
        IF EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = v.source AND t.tgname = trig) THEN
            EXECUTE format('DROP TRIGGER %I ON %s', trig, v.source);
        END IF;
    END LOOP;
END
$$;


CREATE OR REPLACE FUNCTION qvl._drop_shadow_objects(v qvl.vectorizer) RETURNS void LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    tbl regclass;
BEGIN
    PERFORM qvl._drop_shadow_triggers(v);
    -- Only those that exist (no "skipping" NOTICE: qvl.drop_vectorizer calls this for every vectorizer).
    FOR tbl IN SELECT to_regclass(p || v.id) FROM unnest(ARRAY['qvl.shadow_queue_', 'qvl.shadow_failed_',
                                                               'qvl.shadow_rows_']) AS p LOOP
        IF tbl IS NOT NULL THEN
            EXECUTE format('DROP TABLE %s', tbl);
        END IF;
    END LOOP;
END
$$;


-- Every right on ``source`` (a chunk table or its view) that its owner granted, granted on ``target`` too
-- (as the owner): whoever reads the live chunks reads the shadow's after the switch.
CREATE OR REPLACE FUNCTION qvl._copy_grants(source regclass, target regclass) RETURNS void LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    g record;
BEGIN
    FOR g IN SELECT CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END AS who,
                    a.privilege_type, a.is_grantable
               FROM pg_class c, LATERAL aclexplode(c.relacl) a
              WHERE c.oid = source AND a.grantee <> c.relowner LOOP
        PERFORM qvl._as_owner(target, format('GRANT %s ON %s TO %s%s', g.privilege_type, target, g.who,
                                             CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END));
    END LOOP;
END
$$;


-- A chunked vectorizer's shadow: a chunk table ``shadow`` beside the live one (the same schema, shape,
-- index kind, owner and grants; vectors of ``dims``) and its view. Returns the table and the view.
CREATE OR REPLACE FUNCTION qvl._create_shadow_chunks(v qvl.vectorizer, shadow name, dims int, OUT chunks regclass,
                                                     OUT chunk_view regclass)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    live regclass := qvl._chunk_table(v);
    schema_name name := (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                          WHERE c.oid = live);
    view_name name := left(shadow || '_view', 63);
BEGIN
    IF live IS NULL THEN
        RAISE EXCEPTION 'qvl: the chunk table of vectorizer % is gone', v.name USING ERRCODE = '55000';
    END IF;
    IF to_regclass(format('%I.%I', schema_name, shadow)) IS NOT NULL
       OR to_regclass(format('%I.%I', schema_name, view_name)) IS NOT NULL THEN
        RAISE EXCEPTION 'qvl: %.% or %.% exists: a shadow chunk table must be a new one', schema_name, shadow,
                schema_name, view_name USING ERRCODE = '42P07',
            HINT = 'Name another table: shadow => ''manual_pages_v2''.';
    END IF;
    chunks := qvl._create_chunk_table(v.source, schema_name, shadow, v.pk_columns, v.pk_types,
                                      qvl._vector_type(v.storage, dims, v.index_kind), v.index_kind, v.storage,
                                      v.name);
    chunk_view := qvl._create_chunk_view(v.source, chunks, format('%I.%I', schema_name, view_name), v.pk_columns);
    PERFORM qvl._copy_grants(live, chunks);
    IF EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = (to_jsonb(v) ->> 'chunk_view')::regclass) THEN
        PERFORM qvl._copy_grants((to_jsonb(v) ->> 'chunk_view')::regclass, chunk_view);
    END IF;
    PERFORM qvl._ensure_worker_role();
    EXECUTE format('GRANT SELECT, INSERT, DELETE ON %s TO qvl_worker', chunks);
END
$$;


-- A shadow for another model: ``service`` (its HTTP address) is asked for its model and size; the shadow
-- (a column, or for a chunked vectorizer a chunk table: ``shadow`` names it) gets the vectorizer's
-- dimensions (``dimensions`` to choose others, within the new model's size), an HNSW index where the
-- vectorizer has one, and every row is queued for it. Queries keep the vectorizer's column (chunk table)
-- and service until qvl.switch_vectorizer. Returns the rows queued.
CREATE OR REPLACE FUNCTION qvl.reembed(name text, service text, shadow name, dimensions int DEFAULT NULL)
RETURNS bigint LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp SET row_security = off AS $$
#variable_conflict use_variable
DECLARE
    v qvl.vectorizer := qvl._vectorizer(name);
    model jsonb;
    dims int;
    made_table regclass;
    made_view regclass;
    column_v qvl.vectorizer;
    n bigint;
BEGIN
    PERFORM qvl._check_shadow_request(v, shadow);
    model := qvl._shadow_model(service);
    dims := coalesce(dimensions, least(v.dimensions, (model ->> 'hidden_size')::int));
    IF dims > (model ->> 'hidden_size')::int OR dims < 1 THEN
        RAISE EXCEPTION 'qvl: the model at % gives up to % dimensions, not %', service, model ->> 'hidden_size', dims
            USING ERRCODE = '22023', HINT = format('Pass dimensions => %s or fewer.', model ->> 'hidden_size');
    END IF;
    IF qvl._chunked(v) THEN
        SELECT * INTO made_table, made_view FROM qvl._create_shadow_chunks(v, shadow, dims);
    ELSE
        PERFORM qvl._as_owner(v.source, format('ALTER TABLE %s ADD COLUMN %I %s', v.source, shadow,
                                               qvl._vector_type(v.storage, dims, v.index_kind)));
        IF v.index_kind = 'hnsw' THEN
            column_v := v;
            column_v.destination := shadow;
            PERFORM qvl._as_owner(v.source, qvl._index_sql(column_v));
        END IF;
    END IF;
    PERFORM qvl._create_shadow_objects(v, shadow, made_table);
    EXECUTE format('INSERT INTO qvl.shadow_queue_%s (%s) SELECT %2$s FROM %s', v.id,
                   (SELECT string_agg(format('%I', c), ', ') FROM unnest(v.pk_columns) AS c), v.source);
    GET DIAGNOSTICS n = ROW_COUNT;
    IF to_regclass(format('qvl.shadow_rows_%s', v.id)) IS NOT NULL THEN
        EXECUTE format('INSERT INTO qvl.shadow_rows_%s (delta) VALUES ($1)', v.id) USING n;
    END IF;
    INSERT INTO qvl.shadow (vectorizer_id, state, destination, dimensions, service_url, model_fingerprint, model_name)
    VALUES (v.id, 'filling', shadow, dims, qvl._check_service(service, NULL), model ->> 'fingerprint',
            model ->> 'name');
    IF made_table IS NOT NULL THEN  -- (version 15)
        EXECUTE 'UPDATE qvl.shadow SET chunk_table = $1, chunk_view = $2 WHERE vectorizer_id = $3'
          USING made_table, made_view, v.id;
    END IF;
    PERFORM pg_notify('qvl_config', v.id::text);
    PERFORM pg_notify('qvl_queue', v.id::text);
    RETURN n;
END
$$;
COMMENT ON FUNCTION qvl.reembed(text, text, name, int) IS
    'Blue/green: fill a shadow column (chunk table) from another model''s service (qvl worker --shadow), then '
    'qvl.switch_vectorizer';


-- qvl.reembed(name, service, shadow)'s refusals: a second side already there, a sync vectorizer, a chunked
-- one before version 15, a shadow column that exists.
CREATE OR REPLACE FUNCTION qvl._check_shadow_request(v qvl.vectorizer, shadow name) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s qvl.shadow;
BEGIN
    SELECT * INTO s FROM qvl.shadow WHERE vectorizer_id = v.id FOR UPDATE;
    IF FOUND THEN
        RAISE EXCEPTION 'qvl: vectorizer % already has a second column, % (%)', v.name, s.destination,
                CASE s.state WHEN 'filling' THEN 'a shadow being filled' ELSE 'the old column of a switch' END
            USING ERRCODE = '55000',
            HINT = CASE s.state WHEN 'filling' THEN format('Finish it (SELECT qvl.switch_vectorizer(%L)) or give it '
                                                          'up (SELECT qvl.abandon_shadow(%L)).', v.name, v.name)
                                ELSE format('Drop it first: SELECT qvl.drop_old_column(%L);', v.name) END;
    END IF;
    IF v.mode <> 'async' OR (qvl._chunked(v) AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = 'qvl.shadow'::regclass
                                                                AND a.attname = 'chunk_table' AND NOT a.attisdropped)) THEN
        RAISE EXCEPTION 'qvl: vectorizer % is %: a shadow is for an async vectorizer', v.name,
                CASE WHEN v.mode <> 'async' THEN v.mode || ' mode' ELSE 'chunked (schema before version 15)' END
            USING ERRCODE = '0A000',
            HINT = format('Use SELECT qvl.reembed(%L) with the new model served instead (search is empty until '
                          'the rows are embedded again).', v.name);
    END IF;
    IF NOT qvl._chunked(v) AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = v.source AND a.attname = shadow
                                          AND a.attnum > 0 AND NOT a.attisdropped) THEN
        RAISE EXCEPTION 'qvl: %.% already exists: a shadow column must be a new one', v.source, shadow
            USING ERRCODE = '42701', HINT = 'Name another column: shadow => ''embedding_v2''.';
    END IF;
END
$$;


-- The embedding model the service at ``url`` serves (its /v1/info entry), refused without a fingerprint.
CREATE OR REPLACE FUNCTION qvl._shadow_model(url text) RETURNS jsonb LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    model jsonb;
BEGIN
    SELECT m INTO model FROM jsonb_array_elements(qvl._service_info_at(url) -> 'models') AS m
     WHERE m ->> 'task' = 'embed' LIMIT 1;
    IF model IS NULL OR coalesce(model ->> 'fingerprint', '') = '' THEN
        RAISE EXCEPTION 'qvl: the service at % serves no embedding model with a fingerprint', url
            USING ERRCODE = '22023', HINT = 'Start the new model''s service with --embedding-model (a qvl that '
                                            'reports model fingerprints).';
    END IF;
    RETURN model;
END
$$;


-- An older qvl's switch (without back and lock_timeout): replaced by sql/idempotent/014_blue_green_switch.sql.
DO $$
BEGIN
    IF to_regprocedure('qvl.switch_vectorizer(text, boolean)') IS NOT NULL THEN
        DROP FUNCTION qvl.switch_vectorizer(text, boolean);
    END IF;
END
$$;


-- The worker reads which shadows to fill (qvl worker --shadow); the shadow's queueing runs as qvl_trigger,
-- never as the installing role (as every qvl trigger function: sql/idempotent/003_vectorizer_security.sql).
SELECT qvl._ensure_worker_role();
GRANT SELECT ON qvl.shadow TO qvl_worker;
SELECT qvl._ensure_trigger_role();
SELECT qvl._own_by_trigger_role('qvl._enqueue_shadow()');  -- lends CREATE on schema qvl where the installer is no superuser
SELECT qvl._own_by_trigger_role('qvl._shadow_chunks_gone()');
SELECT qvl._own_by_trigger_role('qvl._shadow_count()');
