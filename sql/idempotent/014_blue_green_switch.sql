-- qvl 014: blue/green's switch, its way back and the drops (issue 23 item 3; docs/model-upgrades.md).
-- Re-applied by every install once the schema is at version 14; the shadow itself is made by
-- sql/idempotent/014_blue_green.sql.
--
--   qvl.switch_vectorizer(name)               once the shadow is complete: column (chunk table), service and
--                                             model swapped in one transaction; the old side becomes the
--                                             shadow ('retired'), still queued for, so the switch can go back
--   qvl.switch_vectorizer(name, back => true) the same swap, back to the old side once it is complete again
--   qvl.drop_old_column(name)                 the old side dropped (its column or chunk table, queue, triggers)
--   qvl.abandon_shadow(name)                  a shadow given up: the same, for a shadow never switched to
-- The switch waits at most ``lock_timeout`` for its locks (55P03 after, nothing changed).


-- The switch's locks: the shadow's catalog row, then the table (SHARE ROW EXCLUSIVE: the writers wait, so
-- no row is queued between the count and the swap; readers go on), then the vectorizer's row. Each waits
-- at most ``wait``: a long transaction writing the table must not queue every writer behind the switch.
-- Returns the shadow in ``state`` (NULL: none).
CREATE OR REPLACE FUNCTION qvl._lock_for_switch(v qvl.vectorizer, state text, wait interval) RETURNS qvl.shadow
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    s qvl.shadow;
    was text := current_setting('lock_timeout');
    holders text;
BEGIN
    IF wait IS NULL OR wait <= interval '0' THEN
        RAISE EXCEPTION 'qvl: lock_timeout must be a positive interval, got %', coalesce(wait::text, 'NULL')
            USING ERRCODE = '22023', HINT = 'lock_timeout => ''5 seconds''.';
    END IF;
    PERFORM set_config('lock_timeout', ceil(extract(epoch FROM wait) * 1000)::bigint::text, true);
    BEGIN
        SELECT * INTO s FROM qvl.shadow x WHERE x.vectorizer_id = v.id AND x.state = state FOR UPDATE;
        IF FOUND THEN
            EXECUTE format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', v.source);
            PERFORM 1 FROM qvl.vectorizer x WHERE x.id = v.id FOR UPDATE;
        END IF;
    EXCEPTION WHEN lock_not_available THEN
        SELECT string_agg(format('pid %s (%s since %s: %s)', a.pid, coalesce(a.state, '?'),
                                 to_char(a.xact_start, 'HH24:MI:SS'), left(coalesce(a.query, '?'), 60)), '; ')
          INTO holders
          FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
         WHERE l.granted AND l.pid <> pg_backend_pid()
           AND ((l.relation = v.source AND l.mode NOT IN ('AccessShareLock', 'RowShareLock'))
                OR (l.relation IN ('qvl.shadow'::regclass, 'qvl.vectorizer'::regclass)
                    AND l.mode IN ('RowShareLock', 'RowExclusiveLock')));
        PERFORM set_config('lock_timeout', was, true);
        RAISE EXCEPTION 'qvl: vectorizer %: the switch waited % for its locks on % and gave up; nothing changed',
                v.name, wait, v.source USING ERRCODE = '55P03',
            HINT = format('Retry when the transactions writing the table are done (or pass a longer lock_timeout => '
                          '''30 seconds''). Holding them: %s.', coalesce(holders, 'a transaction that has ended since'));
    END;
    PERFORM set_config('lock_timeout', was, true);
    RETURN s;
END
$$;


-- The rows each side still has to embed, and its failed rows, go with the side: the live queue's rows
-- (waiting for the model now leaving) become the shadow's, the shadow's failed rows the vectorizer's.
-- The shadow's queue is empty here (the switch checked it). Claims are dropped: a worker of the model
-- now leaving claims them again from the shadow's queue.
CREATE OR REPLACE FUNCTION qvl._swap_queues(v qvl.vectorizer) RETURNS void LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    keys text := (SELECT string_agg(format('%I', c), ', ') FROM unnest(v.pk_columns) AS c);
    failed_new jsonb;
BEGIN
    EXECUTE format('WITH d AS (DELETE FROM qvl.queue_%1$s RETURNING %2$s) '
                   'INSERT INTO qvl.shadow_queue_%1$s (%2$s) SELECT %2$s FROM d', v.id, keys);
    EXECUTE format('SELECT coalesce(jsonb_agg(f), ''[]'') FROM qvl.shadow_failed_%s f', v.id) INTO failed_new;
    EXECUTE format('DELETE FROM qvl.shadow_failed_%s', v.id);
    EXECUTE format('WITH d AS (DELETE FROM qvl.failed_%1$s RETURNING *) INSERT INTO qvl.shadow_failed_%1$s '
                   'SELECT * FROM d', v.id);
    EXECUTE format('INSERT INTO qvl.failed_%1$s SELECT * FROM jsonb_populate_recordset(NULL::qvl.failed_%1$s, $1)',
                   v.id) USING failed_new;
END
$$;


-- The switch: once every row is embedded in the shadow, the vectorizer takes its column (chunk table and
-- view), service and model in one transaction (a query sees all old or all new). The old side becomes
-- the shadow, state 'retired': rows written from now on are queued for it too, so a worker of the old
-- model (qvl worker --shadow on the old service) keeps it complete, and back => true switches to it again
-- the same way. drop_old => true drops it at once (qvl.drop_old_column).
CREATE OR REPLACE FUNCTION qvl.switch_vectorizer(name text, drop_old boolean DEFAULT false, back boolean DEFAULT false,
                                                 lock_timeout interval DEFAULT '5 seconds') RETURNS boolean
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp SET row_security = off AS $$
#variable_conflict use_variable
DECLARE
    v qvl.vectorizer := qvl._vectorizer(name);
    s qvl.shadow := qvl._lock_for_switch(v, CASE WHEN back THEN 'retired' ELSE 'filling' END, lock_timeout);
    left_rows bigint;
    total bigint;
BEGIN
    IF s.vectorizer_id IS NULL OR to_regclass(format('qvl.shadow_queue_%s', v.id)) IS NULL THEN
        RAISE EXCEPTION 'qvl: vectorizer % has no % to switch to', v.name,
                CASE WHEN back THEN 'old column kept current (switched before qvl 15, or dropped)'
                     ELSE 'shadow column' END USING ERRCODE = '55000',
            HINT = CASE WHEN back THEN 'A way back needs the old side: qvl.reembed(name, service => the old model''s '
                                       'service, shadow => a new name) makes one.'
                   ELSE format('Start one: SELECT qvl.reembed(%L, service => ''http://new:8080'', shadow => '
                               '''embedding_v2'');', v.name) END;
    END IF;
    EXECUTE format('SELECT count(*) FROM qvl.shadow_queue_%s', v.id) INTO left_rows;
    IF left_rows > 0 THEN
        EXECUTE format('SELECT count(*) FROM %s', v.source) INTO total;
        RAISE EXCEPTION 'qvl: vectorizer %: the % % is not complete: % of % rows still to embed', v.name,
                CASE WHEN back THEN 'old side' ELSE 'shadow' END, s.destination, left_rows, total
            USING ERRCODE = '55000',
            HINT = format('Run a worker on %s service: qvl worker --service HOST:GRPC_PORT --shadow '
                          '(SELECT * FROM qvl.vectorizer_status shows the progress)%s.',
                          CASE WHEN back THEN 'the old model''s' ELSE 'the new model''s' END,
                          CASE WHEN back THEN '' ELSE format(', or give the shadow up: SELECT qvl.abandon_shadow(%L);',
                                                             v.name) END);
    END IF;
    PERFORM qvl._swap_queues(v);
    PERFORM qvl._swap_sides(v, s);
    PERFORM pg_notify('qvl_config', v.id::text);
    PERFORM pg_notify('qvl_queue', v.id::text);
    IF drop_old THEN
        PERFORM qvl.drop_old_column(name);
    END IF;
    RETURN true;
END
$$;
COMMENT ON FUNCTION qvl.switch_vectorizer(text, boolean, boolean, interval) IS
    'Blue/green: the complete shadow column (chunk table), its service and model become the vectorizer''s, in one '
    'transaction; back => true: the old side again';


-- The catalog swap: the shadow's column (chunk table, view), dimensions, service and model become the
-- vectorizer's and the vectorizer's the shadow's ('retired'). A chunked vectorizer's triggers are made
-- again: the live ones delete the new table's chunks, the shadow's the old table's.
CREATE OR REPLACE FUNCTION qvl._swap_sides(v qvl.vectorizer, s qvl.shadow) RETURNS void LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    fresh qvl.vectorizer;
BEGIN
    UPDATE qvl.vectorizer x SET destination = s.destination, dimensions = s.dimensions, service_url = s.service_url,
                                model_fingerprint = s.model_fingerprint, model_name = s.model_name
     WHERE x.id = v.id;
    UPDATE qvl.shadow x SET state = 'retired', destination = v.destination, dimensions = v.dimensions,
                            service_url = v.service_url, model_fingerprint = v.model_fingerprint,
                            model_name = v.model_name
     WHERE x.vectorizer_id = v.id;
    IF qvl._chunked(v) THEN  -- (version 15: qvl.shadow's chunk columns, read and written dynamically)
        UPDATE qvl.vectorizer x SET chunk_table = (to_jsonb(s) ->> 'chunk_table')::regclass,
                                    chunk_view = (to_jsonb(s) ->> 'chunk_view')::regclass
         WHERE x.id = v.id;
        EXECUTE 'UPDATE qvl.shadow SET chunk_table = $1, chunk_view = $2 WHERE vectorizer_id = $3'
          USING v.chunk_table, v.chunk_view, v.id;
        SELECT * INTO fresh FROM qvl.vectorizer x WHERE x.id = v.id;
        PERFORM qvl._create_enqueue_function(fresh);
        PERFORM qvl._drop_shadow_triggers(v);
        PERFORM qvl._create_shadow_triggers(fresh, v.chunk_table);
        PERFORM qvl._secure_vectorizer(v.id);
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'qvl_worker') THEN
        PERFORM qvl._grant_worker(v.id);
    END IF;
END
$$;


-- Searches running on the vectorizer hold it (shared, from when they resolve its column until their
-- transaction ends: connectors/postgres/plpy/vectorizers.py); a drop waits for them, at most 5 seconds, so a
-- search that resolved the side being dropped still answers from it. Searches that start meanwhile wait
-- behind the drop (and then see the vectorizer without that side).
CREATE OR REPLACE FUNCTION qvl._wait_for_searches(v qvl.vectorizer) RETURNS void LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    was text := current_setting('lock_timeout');
BEGIN
    PERFORM set_config('lock_timeout', '5s', true);
    BEGIN
        PERFORM pg_advisory_xact_lock(7123, v.id);
    EXCEPTION WHEN lock_not_available THEN
        PERFORM set_config('lock_timeout', was, true);
        RAISE EXCEPTION 'qvl: vectorizer %: searches kept running on it for 5 seconds; nothing was dropped', v.name
            USING ERRCODE = '55P03',
            HINT = 'Retry; a transaction that searched the vectorizer holds it until it ends (pg_locks, locktype '
                   '''advisory'', classid 7123, objid the vectorizer''s id, shows who).';
    END;
    PERFORM set_config('lock_timeout', was, true);
END
$$;


-- The second side of a vectorizer dropped: its column or chunk table (and view), its queue, failed table
-- and triggers, its catalog row. qvl.drop_old_column's (state 'retired') and qvl.abandon_shadow's ('filling').
CREATE OR REPLACE FUNCTION qvl._drop_second_side(v qvl.vectorizer, state text) RETURNS boolean
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    s qvl.shadow;
    chunks oid;
    chunk_view oid;
BEGIN
    SELECT * INTO s FROM qvl.shadow x WHERE x.vectorizer_id = v.id AND x.state = state FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'qvl: vectorizer % has no %', v.name,
                CASE state WHEN 'retired' THEN 'old column to drop (no switch left one)'
                           ELSE 'shadow column being filled' END
            USING ERRCODE = '55000',
            HINT = CASE state WHEN 'retired' THEN 'A shadow being filled is given up with qvl.abandon_shadow(name).'
                              ELSE 'The old side of a switch is dropped with qvl.drop_old_column(name).' END;
    END IF;
    PERFORM qvl._wait_for_searches(v);
    PERFORM qvl._drop_shadow_objects(v);
    chunks := (to_jsonb(s) ->> 'chunk_table')::regclass;
    chunk_view := (to_jsonb(s) ->> 'chunk_view')::regclass;
    IF chunks IS NULL THEN
        PERFORM qvl._as_owner(v.source, format('ALTER TABLE %s DROP COLUMN IF EXISTS %I', v.source, s.destination));
    ELSE
        IF EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = chunk_view) THEN
            PERFORM qvl._as_owner(chunk_view, format('DROP VIEW %s', chunk_view::regclass));
        END IF;
        IF EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = chunks) THEN
            PERFORM qvl._as_owner(chunks, format('DROP TABLE %s', chunks::regclass));
        END IF;
    END IF;
    DELETE FROM qvl.shadow x WHERE x.vectorizer_id = v.id;
    PERFORM pg_notify('qvl_config', v.id::text);
    RETURN true;
END
$$;


-- qvl.drop_vectorizer's: a shadow's triggers (which name the vectorizer's key function), queue and counts go
-- with the vectorizer; its column or chunk table only with ``drop_column`` (as the live one's).
CREATE OR REPLACE FUNCTION qvl._drop_shadow_of(v qvl.vectorizer, drop_column boolean) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    state text := (SELECT x.state FROM qvl.shadow x WHERE x.vectorizer_id = v.id);
BEGIN
    IF state IS NOT NULL AND drop_column THEN
        PERFORM qvl._drop_second_side(v, state);
    ELSE
        PERFORM qvl._drop_shadow_objects(v);
    END IF;
END
$$;


CREATE OR REPLACE FUNCTION qvl.drop_old_column(name text) RETURNS boolean
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN qvl._drop_second_side(qvl._vectorizer(name), 'retired');
END
$$;
COMMENT ON FUNCTION qvl.drop_old_column(text) IS
    'Blue/green: drop the column (chunk table) a switch left behind, and its queue';


CREATE OR REPLACE FUNCTION qvl.abandon_shadow(name text) RETURNS boolean
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN qvl._drop_second_side(qvl._vectorizer(name), 'filling');
END
$$;
COMMENT ON FUNCTION qvl.abandon_shadow(text) IS
    'Blue/green: give a shadow column (chunk table) up (dropped, with its queue)';
