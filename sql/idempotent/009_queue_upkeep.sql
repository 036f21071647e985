-- qvl 009: queue upkeep. Re-applied by every install once the schema is at version 9.
--
--   qvl.workers               qvl.worker_status with the workers not heard from for 3 heartbeats as 'stale'
--   qvl.prune_failed          drops failed rows whose table row is gone, and those older than the retention
--   qvl.set_failed_retention  how long a failed row is kept (NULL, the default: as long as its row fails)
-- The worker beats (qvl.worker_status.last_seen), forgets workers not seen for a day, and calls
-- qvl.prune_failed every few minutes (connectors/postgres/worker/monitor.py).

-- A worker killed without a word (SIGKILL, a lost host) leaves its row behind: it is shown as stale once
-- it has missed 3 heartbeats. Workers older than version 9 send none (heartbeat_s NULL): shown as written.
CREATE OR REPLACE VIEW qvl.workers AS
SELECT w.worker, w.service,
       CASE WHEN w.last_seen < now() - 3 * w.heartbeat_s * interval '1 second' THEN 'stale' ELSE w.state END
           AS state,
       w.reason, w.since, w.last_seen, w.heartbeat_s
  FROM qvl.worker_status w;
COMMENT ON VIEW qvl.workers IS
    'qvl worker processes: running, paused (reason says why) or stale (not heard from for 3 heartbeats: '
    'killed, or cut off from the database)';


-- How long a failed row is kept; NULL (the default, also when never set): as long as its row fails.
CREATE OR REPLACE FUNCTION qvl._failed_retention() RETURNS interval LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN c.value = 'forever' THEN NULL ELSE c.value::interval END
      FROM qvl.config c WHERE c.key = 'failed_retention'
$$;

CREATE OR REPLACE FUNCTION qvl.set_failed_retention(retention interval) RETURNS interval LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF retention IS NOT NULL AND retention <= interval '0' THEN
        RAISE EXCEPTION 'qvl: the retention must be positive, got %', retention USING ERRCODE = '22023',
            HINT = 'NULL keeps failed rows as long as their rows fail.';
    END IF;
    INSERT INTO qvl.config (key, value) VALUES ('failed_retention', coalesce(retention::text, 'forever'))
    ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value;
    RETURN retention;
END
$$;
COMMENT ON FUNCTION qvl.set_failed_retention(interval) IS
    'How long qvl.prune_failed keeps a failed row (by failed_at); NULL: as long as its row fails';


-- Failed rows nobody needs: those whose table row was deleted (always), and those that failed longer
-- ago than the retention (older_than, else qvl.set_failed_retention's; none by default). A row embedded
-- since leaves the failed table as it is written (the worker, the sync trigger). row_security off: a
-- caller whom a policy hides rows from must not take them for deleted; for such a table (or one it may
-- not read) gone is NULL, with a warning, and only the age applies. Rows being written right now are
-- skipped (SKIP LOCKED), never waited for: the next pruning takes them.
CREATE OR REPLACE FUNCTION qvl.prune_failed(name text DEFAULT NULL, older_than interval DEFAULT NULL)
RETURNS TABLE(vectorizer text, gone bigint, expired bigint)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp SET row_security = off AS $$
#variable_conflict use_variable
DECLARE
    v qvl.vectorizer;
    keep interval := coalesce(older_than, qvl._failed_retention());
    cols text;
    same_key text;
    in_table text;
BEGIN
    IF name IS NOT NULL THEN
        PERFORM qvl._vectorizer(name);  -- an unknown name is an error, not nothing to prune
    END IF;
    FOR v IN SELECT * FROM qvl.vectorizer x WHERE name IS NULL OR x.name = name ORDER BY x.id LOOP
        CONTINUE WHEN to_regclass(format('qvl.failed_%s', v.id)) IS NULL;
        SELECT string_agg(format('%I', c), ', '), string_agg(format('f.%1$I = d.%1$I', c), ' AND '),
               string_agg(format('s.%1$I = f.%1$I', c), ' AND ')
          INTO cols, same_key, in_table
          FROM unnest(v.pk_columns) AS c;
        vectorizer := v.name;
        gone := NULL;
        expired := 0;
        BEGIN
            EXECUTE format('WITH d AS (SELECT %1$s FROM qvl.failed_%2$s f WHERE NOT EXISTS '
                           '(SELECT 1 FROM %3$s s WHERE %4$s) FOR UPDATE OF f SKIP LOCKED) '
                           'DELETE FROM qvl.failed_%2$s f USING d WHERE %5$s',
                           cols, v.id, v.source, in_table, same_key);
            GET DIAGNOSTICS gone = ROW_COUNT;
            -- Version 12: the cut-text records of deleted rows go too. Each key is read back in its type (the
            -- key index finds the row); the schema guard lets a key's type only widen, so it always reads.
            IF to_regclass('qvl.cut_rows') IS NOT NULL THEN
                SELECT string_agg(format('s.%I = c.key[%s]::%s', u.c, u.o, u.t), ' AND ')
                  INTO in_table FROM unnest(v.pk_columns, v.pk_types) WITH ORDINALITY AS u(c, t, o);
                EXECUTE format('DELETE FROM qvl.cut_rows c WHERE c.vectorizer = $1 AND NOT EXISTS '
                               '(SELECT 1 FROM %s s WHERE %s)', v.source, in_table) USING v.id;
            END IF;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE WARNING 'qvl: failed rows of vectorizer % kept: %', v.name, SQLERRM
                USING HINT = 'Whoever prunes must see every row of the table (superuser, BYPASSRLS, or its owner '
                             'without FORCE ROW LEVEL SECURITY).';
        END;
        IF keep IS NOT NULL THEN
            EXECUTE format('WITH d AS (SELECT %1$s FROM qvl.failed_%2$s f WHERE f.failed_at < now() - $1 '
                           'FOR UPDATE OF f SKIP LOCKED) DELETE FROM qvl.failed_%2$s f USING d WHERE %3$s',
                           cols, v.id, same_key) USING keep;
            GET DIAGNOSTICS expired = ROW_COUNT;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;
COMMENT ON FUNCTION qvl.prune_failed(text, interval) IS
    'Drop failed rows whose table row is gone, and those older than the retention; per vectorizer: (name, gone, expired)';
