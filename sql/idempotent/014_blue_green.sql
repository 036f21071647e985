-- qvl 014: blue/green model upgrades (issue 23 item 3; docs/model-upgrades.md). Re-applied by every
-- install once the schema is at version 14 (the table and column: sql/incremental/014_blue_green.sql).
--
--   qvl.reembed(name, service, shadow)  a shadow column of the new model's size, its rows queued in
--                                       qvl.shadow_queue_<id>; `qvl worker --shadow` fills it from the new
--                                       service while queries keep the vectorizer's column and service
--   qvl.switch_vectorizer(name)         once the shadow is complete: column, service and model swapped in
--                                       one transaction
--   qvl.drop_old_column(name)           the column a switch left behind, dropped
--   qvl.abandon_shadow(name)            a shadow given up: its column, queue and triggers dropped

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


CREATE OR REPLACE FUNCTION qvl._shadow_trigger_names(vid int) RETURNS name[] LANGUAGE sql IMMUTABLE AS $$
    SELECT ARRAY[format('qvl_%s_shadow_insert', vid), format('qvl_%s_shadow_update', vid),
                 format('qvl_%s_shadow_key', vid), format('qvl_%s_shadow_truncate', vid)]::name[]
$$;


-- The shadow's queue and failed tables (the vectorizer's own, copied), its triggers, and the rights of
-- the worker and the trigger role on them.
CREATE OR REPLACE FUNCTION qvl._create_shadow_objects(v qvl.vectorizer, shadow name) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    names name[] := qvl._shadow_trigger_names(v.id);
    args text := (SELECT string_agg(format('%L', c), ', ') FROM unnest(v.pk_columns) AS c);
    watched text;
    changed text;
BEGIN
    SELECT string_agg(format('%I', c), ', '), string_agg(format('OLD.%1$I IS DISTINCT FROM NEW.%1$I', c), ' OR ')
      INTO watched, changed
      FROM unnest(v.text_columns || v.image_columns || v.video_columns) AS c;
    EXECUTE format('CREATE TABLE qvl.shadow_queue_%s (LIKE qvl.queue_%s INCLUDING ALL) '
                   'WITH (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 500)', v.id, v.id);
    EXECUTE format('CREATE TABLE qvl.shadow_failed_%s (LIKE qvl.failed_%s INCLUDING ALL)', v.id, v.id);
    EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %s FOR EACH ROW EXECUTE FUNCTION qvl._enqueue_shadow(%L, %s)',
                   names[1], v.source, v.id, args);
    EXECUTE format('CREATE TRIGGER %I AFTER UPDATE OF %s ON %s FOR EACH ROW WHEN (%s) '
                   'EXECUTE FUNCTION qvl._enqueue_shadow(%L, %s)', names[2], watched, v.source, changed, v.id, args);
    EXECUTE format('CREATE TRIGGER %I AFTER UPDATE ON %s FOR EACH ROW WHEN (qvl._key_changed_%s(OLD, NEW)) '
                   'EXECUTE FUNCTION qvl._enqueue_shadow(%L, %s)', names[3], v.source, v.id, v.id, args);
    EXECUTE format('CREATE TRIGGER %I AFTER TRUNCATE ON %s FOR EACH STATEMENT '
                   'EXECUTE FUNCTION qvl._enqueue_shadow(%L)', names[4], v.source, v.id);
    EXECUTE format('ALTER TABLE %s ', v.source)
            || (SELECT string_agg(format('ENABLE ALWAYS TRIGGER %I', n), ', ') FROM unnest(names) AS n);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON qvl.shadow_queue_%s TO qvl_trigger', v.id);
    EXECUTE format('GRANT SELECT, DELETE ON qvl.shadow_failed_%s TO qvl_trigger', v.id);
    PERFORM qvl._ensure_worker_role();
    EXECUTE format('GRANT SELECT, UPDATE, DELETE ON qvl.shadow_queue_%s TO qvl_worker', v.id);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON qvl.shadow_failed_%s TO qvl_worker', v.id);
    EXECUTE format('GRANT UPDATE (%I) ON %s TO qvl_worker', shadow, v.source);
END
$$;


CREATE OR REPLACE FUNCTION qvl._drop_shadow_objects(v qvl.vectorizer) RETURNS void LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    trig name;
BEGIN
    FOREACH trig IN ARRAY qvl._shadow_trigger_names(v.id) LOOP
        IF EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = v.source AND t.tgname = trig) THEN
            EXECUTE format('DROP TRIGGER %I ON %s', trig, v.source);
        END IF;
    END LOOP;
    EXECUTE format('DROP TABLE IF EXISTS qvl.shadow_queue_%s, qvl.shadow_failed_%s', v.id, v.id);
END
$$;


-- A shadow column for another model: ``service`` (its HTTP address) is asked for its model and size; the
-- column gets the vectorizer's dimensions (``dimensions`` to choose others, within the new model's
-- size), an HNSW index where the vectorizer has one, and every row is queued for it. Queries keep the
-- vectorizer's column and service until qvl.switch_vectorizer. Returns the rows queued.
CREATE OR REPLACE FUNCTION qvl.reembed(name text, service text, shadow name, dimensions int DEFAULT NULL)
RETURNS bigint LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp SET row_security = off AS $$
#variable_conflict use_variable
DECLARE
    v qvl.vectorizer := qvl._vectorizer(name);
    s qvl.shadow;
    info jsonb;
    model jsonb;
    size int;
    dims int;
    n bigint;
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
    IF v.mode <> 'async' OR to_jsonb(v) ->> 'chunking' IS NOT NULL THEN
        RAISE EXCEPTION 'qvl: vectorizer % is %: a shadow column is for a one-vector async vectorizer', v.name,
                CASE WHEN v.mode <> 'async' THEN v.mode || ' mode' ELSE 'chunked' END USING ERRCODE = '0A000',
            HINT = format('Use SELECT qvl.reembed(%L) with the new model served instead (search is empty until '
                          'the rows are embedded again).', v.name);
    END IF;
    IF EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = v.source AND a.attname = shadow AND a.attnum > 0
                  AND NOT a.attisdropped) THEN
        RAISE EXCEPTION 'qvl: %.% already exists: a shadow column must be a new one', v.source, shadow
            USING ERRCODE = '42701', HINT = 'Name another column: shadow => ''embedding_v2''.';
    END IF;
    info := qvl._service_info_at(service);
    SELECT m INTO model FROM jsonb_array_elements(info -> 'models') AS m WHERE m ->> 'task' = 'embed' LIMIT 1;
    IF model IS NULL OR coalesce(model ->> 'fingerprint', '') = '' THEN
        RAISE EXCEPTION 'qvl: the service at % serves no embedding model with a fingerprint', service
            USING ERRCODE = '22023', HINT = 'Start the new model''s service with --embedding-model (a qvl that '
                                            'reports model fingerprints).';
    END IF;
    size := (model ->> 'hidden_size')::int;
    dims := coalesce(dimensions, least(v.dimensions, size));
    IF dims > size OR dims < 1 THEN
        RAISE EXCEPTION 'qvl: the model at % gives up to % dimensions, not %', service, size, dims
            USING ERRCODE = '22023', HINT = format('Pass dimensions => %s or fewer.', size);
    END IF;
    PERFORM qvl._as_owner(v.source, format('ALTER TABLE %s ADD COLUMN %I %s', v.source, shadow,
                                           qvl._vector_type(v.storage, dims, v.index_kind)));
    IF v.index_kind = 'hnsw' THEN
        v.destination := shadow;
        PERFORM qvl._as_owner(v.source, qvl._index_sql(v));
    END IF;
    PERFORM qvl._create_shadow_objects(v, shadow);
    EXECUTE format('INSERT INTO qvl.shadow_queue_%s (%s) SELECT %2$s FROM %s', v.id,
                   (SELECT string_agg(format('%I', c), ', ') FROM unnest(v.pk_columns) AS c), v.source);
    GET DIAGNOSTICS n = ROW_COUNT;
    INSERT INTO qvl.shadow (vectorizer_id, state, destination, dimensions, service_url, model_fingerprint, model_name)
    VALUES (v.id, 'filling', shadow, dims, qvl._check_service(service, NULL), model ->> 'fingerprint',
            model ->> 'name');
    PERFORM pg_notify('qvl_config', v.id::text);
    PERFORM pg_notify('qvl_queue', v.id::text);
    RETURN n;
END
$$;
COMMENT ON FUNCTION qvl.reembed(text, text, name, int) IS
    'Blue/green: fill a shadow column from another model''s service (qvl worker --shadow), then '
    'qvl.switch_vectorizer';


-- The switch: once every row is embedded in the shadow, the vectorizer takes its column, service and
-- model in one transaction (a query sees all old or all new). The table's writers wait for it (SHARE ROW
-- EXCLUSIVE: no row is queued between the count and the swap). The old column stays, for a way back,
-- until qvl.drop_old_column (drop_old => true: at once).
CREATE OR REPLACE FUNCTION qvl.switch_vectorizer(name text, drop_old boolean DEFAULT false) RETURNS boolean
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp SET row_security = off AS $$
#variable_conflict use_variable
DECLARE
    v qvl.vectorizer := qvl._vectorizer(name);
    s qvl.shadow;
    left_rows bigint;
    total bigint;
BEGIN
    SELECT * INTO s FROM qvl.shadow WHERE vectorizer_id = v.id AND state = 'filling' FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'qvl: vectorizer % has no shadow column to switch to', v.name USING ERRCODE = '55000',
            HINT = format('Start one: SELECT qvl.reembed(%L, service => ''http://new:8080'', shadow => '
                          '''embedding_v2'');', v.name);
    END IF;
    EXECUTE format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', v.source);
    EXECUTE format('SELECT count(*) FROM qvl.shadow_queue_%s', v.id) INTO left_rows;
    IF left_rows > 0 THEN
        EXECUTE format('SELECT count(*) FROM %s', v.source) INTO total;
        RAISE EXCEPTION 'qvl: vectorizer %: the shadow column % is not complete: % of % rows still to embed',
                v.name, s.destination, left_rows, total USING ERRCODE = '55000',
            HINT = format('Run a worker on the new model''s service: qvl worker --service HOST:GRPC_PORT --shadow '
                          '(SELECT * FROM qvl.vectorizer_status shows the progress), or give the shadow up: '
                          'SELECT qvl.abandon_shadow(%L);', v.name);
    END IF;
    -- The live queue's rows wait for the old model, which the vectorizer no longer uses; the shadow's
    -- failed rows become the vectorizer's.
    EXECUTE format('DELETE FROM qvl.queue_%s', v.id);
    EXECUTE format('DELETE FROM qvl.failed_%s', v.id);
    EXECUTE format('INSERT INTO qvl.failed_%s SELECT * FROM qvl.shadow_failed_%s', v.id, v.id);
    PERFORM qvl._drop_shadow_objects(v);
    UPDATE qvl.vectorizer x SET destination = s.destination, dimensions = s.dimensions, service_url = s.service_url,
                                model_fingerprint = s.model_fingerprint, model_name = s.model_name
     WHERE x.id = v.id;
    UPDATE qvl.shadow x SET state = 'retired', destination = v.destination, dimensions = v.dimensions,
                            service_url = v.service_url, model_fingerprint = v.model_fingerprint,
                            model_name = v.model_name
     WHERE x.vectorizer_id = v.id;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'qvl_worker') THEN  -- the worker writes the new column only
        EXECUTE format('REVOKE UPDATE (%I) ON %s FROM qvl_worker', v.destination, v.source);
        PERFORM qvl._grant_worker(v.id);
    END IF;
    PERFORM pg_notify('qvl_config', v.id::text);
    IF drop_old THEN
        PERFORM qvl.drop_old_column(name);
    END IF;
    RETURN true;
END
$$;
COMMENT ON FUNCTION qvl.switch_vectorizer(text, boolean) IS
    'Blue/green: the complete shadow column, its service and model become the vectorizer''s, in one transaction';


CREATE OR REPLACE FUNCTION qvl.drop_old_column(name text) RETURNS boolean
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    v qvl.vectorizer := qvl._vectorizer(name);
    s qvl.shadow;
BEGIN
    SELECT * INTO s FROM qvl.shadow WHERE vectorizer_id = v.id AND state = 'retired' FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'qvl: vectorizer % has no old column to drop (no switch left one)', v.name
            USING ERRCODE = '55000', HINT = 'A shadow being filled is given up with qvl.abandon_shadow(name).';
    END IF;
    PERFORM qvl._as_owner(v.source, format('ALTER TABLE %s DROP COLUMN IF EXISTS %I', v.source, s.destination));
    DELETE FROM qvl.shadow WHERE vectorizer_id = v.id;
    RETURN true;
END
$$;
COMMENT ON FUNCTION qvl.drop_old_column(text) IS 'Blue/green: drop the column a switch left behind';


CREATE OR REPLACE FUNCTION qvl.abandon_shadow(name text) RETURNS boolean
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    v qvl.vectorizer := qvl._vectorizer(name);
    s qvl.shadow;
BEGIN
    SELECT * INTO s FROM qvl.shadow WHERE vectorizer_id = v.id AND state = 'filling' FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'qvl: vectorizer % has no shadow column being filled', v.name USING ERRCODE = '55000';
    END IF;
    PERFORM qvl._drop_shadow_objects(v);
    PERFORM qvl._as_owner(v.source, format('ALTER TABLE %s DROP COLUMN IF EXISTS %I', v.source, s.destination));
    DELETE FROM qvl.shadow WHERE vectorizer_id = v.id;
    PERFORM pg_notify('qvl_config', v.id::text);
    RETURN true;
END
$$;
COMMENT ON FUNCTION qvl.abandon_shadow(text) IS 'Blue/green: give a shadow column up (dropped, with its queue)';


-- The worker reads which shadows to fill (qvl worker --shadow); the shadow's queueing runs as qvl_trigger,
-- never as the installing role (as every qvl trigger function: sql/idempotent/003_vectorizer_security.sql).
SELECT qvl._ensure_worker_role();
GRANT SELECT ON qvl.shadow TO qvl_worker;
SELECT qvl._ensure_trigger_role();
SELECT qvl._own_by_trigger_role('qvl._enqueue_shadow()');  -- lends CREATE on schema qvl where the installer is no superuser
