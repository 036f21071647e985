-- qvl 003: vectorizers, the objects each one has. A vectorizer keeps a vector column of a table in
-- step with some of its columns (text, images, video: one joint item per row).
--
-- Per vectorizer <id>:
--   qvl.queue_<id>   rows waiting for the worker (primary key of the source row; claimed_until is
--                    the worker's lease, so a killed worker's rows come back by themselves)
--   qvl.failed_<id>  rows the service refused (bad input), with the error; qvl.retry_failed re-queues
--   async mode: AFTER triggers (qvl._enqueue_<id>) add the row's key to the queue in the writing
--               transaction; sync mode: BEFORE triggers (qvl._sync_embed) embed through HTTP.
-- Triggers are ENABLE ALWAYS so they also fire when a logical-replication subscriber applies rows.
--
-- Re-applied by every install (sql/idempotent/); the catalog table qvl.vectorizer is in
-- sql/incremental/001_schema.sql. Version 3's vectorizer functions are four files by concern,
-- applied in name order (after 003_grants.sql): 003_vectorizer_api.sql (the public functions, the
-- status view), 003_vectorizer_checks.sql (what qvl.create_vectorizer checks),
-- 003_vectorizer_objects.sql (this file: the generated queue tables, functions, triggers and index),
-- 003_vectorizer_security.sql (whose rights they run with). PostgreSQL checks the body of a LANGUAGE
-- sql function, and a view, when it is created: those name only functions that an earlier file, or
-- an earlier statement of their own file, creates (a unit test checks it). plpgsql bodies are looked
-- up when they run.

CREATE OR REPLACE FUNCTION qvl._vector_schema() RETURNS text LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
    SELECT quote_ident(n.nspname) FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
     WHERE e.extname = 'vector'
$$;


-- The text form of a row's primary key (what qvl.search and qvl.failed_items report).
CREATE OR REPLACE FUNCTION qvl._pk_text_sql(pk_columns name[], alias text) RETURNS text LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog AS $$
    SELECT CASE WHEN cardinality(pk_columns) = 1 THEN format('%s%I::text', alias, pk_columns[1])
                ELSE format('ROW(%s)::text', (SELECT string_agg(alias || quote_ident(c), ', ')
                                                 FROM unnest(pk_columns) AS c)) END
$$;


-- The generated objects of one vectorizer, one function each; qvl._install_objects runs them all.
-- Each is idempotent, so an upgrade that changes the generated objects calls qvl._install_objects
-- for every vectorizer.

-- qvl.queue_<id> and qvl.failed_<id>, keyed by the source table's primary key.
CREATE OR REPLACE FUNCTION qvl._create_queue_tables(v qvl.vectorizer) RETURNS void LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pk_defs text;
    pk_cols text;
BEGIN
    SELECT string_agg(format('%I %s NOT NULL', c, t), ', ' ORDER BY o), string_agg(format('%I', c), ', ' ORDER BY o)
      INTO pk_defs, pk_cols
      FROM unnest(v.pk_columns, v.pk_types) WITH ORDINALITY AS u(c, t, o);
    -- Queue rows churn: vacuum them often.
    -- not_before: a failed row's backoff; queued_at is indexed: claims take the oldest rows first.
    EXECUTE format('CREATE TABLE IF NOT EXISTS qvl.queue_%s (%s, queued_at timestamptz NOT NULL DEFAULT now(), '
                   'claimed_until timestamptz, claimed_by text, attempts int NOT NULL DEFAULT 0, '
                   'not_before timestamptz, last_error text, PRIMARY KEY (%s)) '
                   'WITH (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 500)',
                   v.id, pk_defs, pk_cols);
    EXECUTE format('CREATE INDEX IF NOT EXISTS queue_%s_queued_at ON qvl.queue_%s (queued_at)', v.id, v.id);
    EXECUTE format('CREATE TABLE IF NOT EXISTS qvl.failed_%s (%s, error text NOT NULL, code text, '
                   'attempts int NOT NULL DEFAULT 1, failed_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (%s))',
                   v.id, pk_defs, pk_cols);
END
$$;


-- A vectorizer's triggers. Per mode, the row's content (one trigger each for INSERT and for an UPDATE
-- of an input column):
--   async  qvl_<id>_insert, qvl_<id>_update          AFTER: qvl._enqueue_<id> queues the row's key
--   sync   zzz_qvl_<id>_insert, zzz_qvl_<id>_update  BEFORE: qvl._sync_embed writes the vector into the row
-- and in both modes the row's key and the table's rows as a whole (the queue refers to rows by key):
--   zzz_qvl_<id>_key    BEFORE UPDATE of the key: the old key's queue and failed entries go
--   qvl_<id>_key        AFTER UPDATE of the key: the new key is queued
--   qvl_<id>_truncate   AFTER TRUNCATE: the queue and failed tables are emptied
-- and a chunked vectorizer's (version 13: its vectors are rows of a table of their own):
--   qvl_<id>_delete     AFTER DELETE: the row's chunks go with it (and a key change's, a TRUNCATE's)
-- "zzz": BEFORE triggers fire in name order, so these see what other BEFORE triggers wrote.
CREATE OR REPLACE FUNCTION qvl._trigger_names(vid int) RETURNS name[] LANGUAGE sql IMMUTABLE AS $$
    SELECT ARRAY[format('qvl_%s_insert', vid), format('qvl_%s_update', vid),
                 format('zzz_qvl_%s_insert', vid), format('zzz_qvl_%s_update', vid),
                 format('zzz_qvl_%s_key', vid), format('qvl_%s_key', vid), format('qvl_%s_truncate', vid),
                 format('qvl_%s_delete', vid)]::name[]
$$;

-- Whether a vectorizer is chunked (version 13: its vectors are rows of a table of their own; read through
-- to_jsonb, so these functions are the same at every version).
CREATE OR REPLACE FUNCTION qvl._chunked(v qvl.vectorizer) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT to_jsonb(v) ->> 'chunking' IS NOT NULL
$$;

-- A chunked vectorizer's table of chunks, while it exists (NULL: one vector per row).
CREATE OR REPLACE FUNCTION qvl._chunk_table(v qvl.vectorizer) RETURNS regclass LANGUAGE sql STABLE
SET search_path = pg_catalog AS $$
    SELECT c.oid::regclass FROM pg_class c WHERE qvl._chunked(v) AND c.oid = (to_jsonb(v) ->> 'chunk_table')::regclass
$$;

-- The names of the triggers a vectorizer of this mode has (a chunked one's delete trigger too).
CREATE OR REPLACE FUNCTION qvl._mode_trigger_names(vid int, mode text) RETURNS name[] LANGUAGE sql STABLE AS $$
    SELECT CASE mode WHEN 'async' THEN (qvl._trigger_names(vid))[1:2] ELSE (qvl._trigger_names(vid))[3:4] END
           || (qvl._trigger_names(vid))[5:7]
           || CASE WHEN EXISTS (SELECT 1 FROM qvl.vectorizer x WHERE x.id = vid AND qvl._chunk_table(x) IS NOT NULL)
                   THEN (qvl._trigger_names(vid))[8:8] ELSE '{}'::name[] END
$$;

-- What each of a vectorizer's triggers says of itself (COMMENT ON TRIGGER). An install re-creates the
-- triggers of any vectorizer whose triggers do not all say this (qvl._refresh_triggers): change it
-- whenever the triggers qvl._create_triggers makes change.
CREATE OR REPLACE FUNCTION qvl._trigger_comment() RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT 'qvl: made by qvl.create_vectorizer, removed by qvl.drop_vectorizer (key and truncate triggers)'::text
$$;


-- qvl's own change of a vectorizer's triggers, for the schema guard (sql/idempotent/007_schema_guard.sql),
-- which refuses anyone else's DROP, CREATE OR REPLACE or ALTER TRIGGER of them. A row of
-- qvl.trigger_changes, which only the installing role may write, written before the change and deleted
-- after it in the same transaction: no other session ever sees one, and an error takes it away with
-- the change. Marks nest (qvl._create_triggers calls qvl._drop_triggers): each end deletes one row. A
-- database stopped before version 10 (install --target) has no such table: the setting version 7 read.
CREATE OR REPLACE FUNCTION qvl._mark_trigger_change(vid int, starting boolean) RETURNS void LANGUAGE plpgsql
VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF to_regclass('qvl.trigger_changes') IS NULL THEN
        PERFORM set_config('qvl.dropping_triggers', CASE WHEN starting THEN 'on' ELSE '' END, true);
    ELSIF starting THEN
        INSERT INTO qvl.trigger_changes (vectorizer) VALUES (vid);
    ELSE
        DELETE FROM qvl.trigger_changes
         WHERE ctid = (SELECT ctid FROM qvl.trigger_changes WHERE vectorizer = vid LIMIT 1);
    END IF;
END
$$;

-- Whether qvl itself is changing the vectorizer's triggers now (qvl._mark_trigger_change).
CREATE OR REPLACE FUNCTION qvl._own_trigger_change(vid int) RETURNS boolean LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF to_regclass('qvl.trigger_changes') IS NULL THEN
        RETURN coalesce(current_setting('qvl.dropping_triggers', true), '') = 'on';
    END IF;
    RETURN EXISTS (SELECT 1 FROM qvl.trigger_changes WHERE vectorizer = vid);
END
$$;


-- A vectorizer's triggers off its table. Only those that exist: DROP ... IF EXISTS would say "does
-- not exist, skipping" for the other mode's.
CREATE OR REPLACE FUNCTION qvl._drop_triggers(vid int, source regclass) RETURNS void LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    trig name;
BEGIN
    PERFORM qvl._mark_trigger_change(vid, true);
    FOR trig IN SELECT t.tgname FROM pg_trigger t
                 WHERE t.tgrelid = source AND NOT t.tgisinternal AND t.tgname = ANY (qvl._trigger_names(vid)) LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', trig, source);
    END LOOP;
    PERFORM qvl._mark_trigger_change(vid, false);
END
$$;


-- A vectorizer's generated functions, those that exist, dropped without a "does not exist, skipping"
-- NOTICE (after its triggers, which call them).
CREATE OR REPLACE FUNCTION qvl._drop_enqueue_function(vid int) RETURNS void LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF to_regprocedure(format('qvl._enqueue_%s()', vid)) IS NOT NULL THEN
        EXECUTE format('DROP FUNCTION qvl._enqueue_%s()', vid);
    END IF;
    IF to_regprocedure(format('qvl._key_changed_%s(anyelement, anyelement)', vid)) IS NOT NULL THEN
        EXECUTE format('DROP FUNCTION qvl._key_changed_%s(anyelement, anyelement)', vid);
    END IF;
END
$$;


-- How the generated functions compare a key column: with the equality operator of the primary key's
-- own index (the one that makes keys unique), schema-qualified, so that no search_path can put another
-- operator in its place. In key order.
CREATE OR REPLACE FUNCTION qvl._key_operators(source regclass) RETURNS text[] LANGUAGE sql STABLE
SET search_path = pg_catalog AS $$
    SELECT array_agg(format('OPERATOR(%I.%s)', n.nspname, o.oprname) ORDER BY k.ord)
      FROM pg_index i
      CROSS JOIN LATERAL unnest(i.indkey::int2[], i.indclass::oid[]) WITH ORDINALITY AS k(attnum, opclass, ord)
      JOIN pg_opclass c ON c.oid = k.opclass
      JOIN pg_amop a ON a.amopfamily = c.opcfamily AND a.amoplefttype = c.opcintype
                    AND a.amoprighttype = c.opcintype AND a.amopstrategy = 3 AND a.amopmethod = c.opcmethod
      JOIN pg_operator o ON o.oid = a.amopopr
      JOIN pg_namespace n ON n.oid = o.oprnamespace
     WHERE i.indrelid = source AND i.indisprimary
$$;

-- "Each key column of left equals right's", e.g. "q.id OPERATOR(pg_catalog.=) OLD.id".
CREATE OR REPLACE FUNCTION qvl._same_key_sql(v qvl.vectorizer, left_side text, right_side text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
    SELECT string_agg(format('%s%I %s %s%I', left_side, u.c, u.op, right_side, u.c), ' AND ' ORDER BY u.o)
      FROM unnest(v.pk_columns, qvl._key_operators(v.source)) WITH ORDINALITY AS u(c, op, o)
$$;


-- Async mode's trigger function qvl._enqueue_<id> (sync mode has it too, for the key and truncate
-- triggers): the row's key into the queue, one NOTIFY per transaction; a key change's old entries out.
CREATE OR REPLACE FUNCTION qvl._create_enqueue_function(v qvl.vectorizer) RETURNS void LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pk_cols text;
    new_vals text;
    old_vals text;
    chunks regclass := qvl._chunk_table(v);
    old_chunks text := '';  -- a chunked vectorizer's: the old key's chunks out (key change, DELETE)
    all_chunks text := '';  -- and every chunk (TRUNCATE)
BEGIN
    SELECT string_agg(format('%I', c), ', ' ORDER BY o), string_agg(format('NEW.%I', c), ', ' ORDER BY o),
           string_agg(format('OLD.%I', c), ', ' ORDER BY o)
      INTO pk_cols, new_vals, old_vals
      FROM unnest(v.pk_columns) WITH ORDINALITY AS u(c, o);
    IF chunks IS NOT NULL THEN
        old_chunks := format('DELETE FROM %s q WHERE %s;', chunks, qvl._same_key_sql(v, 'q.', 'OLD.'));
        all_chunks := format('DELETE FROM %s;', chunks);
    END IF;
    -- SECURITY DEFINER: whoever may write the table may queue its rows, without rights on qvl;
    -- owned by qvl_trigger (qvl._secure_vectorizer), never by the installing superuser.
    -- No SET search_path (it costs a GUC save/restore per row, a third of the trigger): instead
    -- every name below is schema-qualified, the operators included, so no search_path a caller
    -- sets can redirect anything. Static SQL: one cached plan per backend. One NOTIFY per
    -- transaction and vectorizer: a transaction-local flag remembers that it was sent.
    -- A key change: the BEFORE trigger drops the old key's entries, the AFTER trigger queues the new
    -- key. Every BEFORE trigger of a statement fires before any AFTER one, so when rows trade keys in
    -- one statement (a deferrable key) no row's new entry is dropped as another row's old one.
    EXECUTE format($f$
            CREATE OR REPLACE FUNCTION qvl._enqueue_%1$s() RETURNS trigger LANGUAGE plpgsql VOLATILE
            SECURITY DEFINER AS $body$
            BEGIN
                IF TG_WHEN OPERATOR(pg_catalog.=) 'BEFORE' THEN
                    IF %5$s THEN  -- the same key (the trigger has no WHEN on a table with generated columns)
                        RETURN NEW;
                    END IF;
                    DELETE FROM qvl.queue_%1$s q WHERE %4$s;
                    DELETE FROM qvl.failed_%1$s q WHERE %4$s;
                    %6$s
                    RETURN NEW;
                ELSIF TG_OP OPERATOR(pg_catalog.=) 'TRUNCATE' THEN
                    DELETE FROM qvl.queue_%1$s;
                    DELETE FROM qvl.failed_%1$s;
                    %7$s
                    RETURN NULL;
                ELSIF TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN
                    -- A chunked vectorizer's: the chunks go. The key is queued first: that waits for a worker
                    -- writing this row's chunks now (it holds the queue row) and takes the row from it, so
                    -- the DELETE below, a new snapshot, sees what it wrote; the worker forgets the entry.
                    INSERT INTO qvl.queue_%1$s AS q (%2$s) VALUES (%8$s)
                    ON CONFLICT (%2$s) DO UPDATE SET claimed_until = NULL, claimed_by = NULL, not_before = NULL,
                                                      attempts = 0, last_error = NULL;
                    %6$s
                    RETURN NULL;
                END IF;
                INSERT INTO qvl.queue_%1$s AS q (%2$s) VALUES (%3$s)
                ON CONFLICT (%2$s) DO UPDATE SET claimed_until = NULL, claimed_by = NULL, not_before = NULL,
                                                  attempts = 0, last_error = NULL;
                IF COALESCE(pg_catalog.current_setting('qvl.notified_%1$s', true), '') OPERATOR(pg_catalog.<>) 'y' THEN
                    PERFORM pg_catalog.pg_notify('qvl_queue', '%1$s');
                    PERFORM pg_catalog.set_config('qvl.notified_%1$s', 'y', true);
                END IF;
                RETURN NULL;
            END
            $body$
    $f$, v.id, pk_cols, new_vals, qvl._same_key_sql(v, 'q.', 'OLD.'), qvl._same_key_sql(v, 'OLD.', 'NEW.'),
       old_chunks, all_chunks, old_vals);
    EXECUTE format('REVOKE ALL ON FUNCTION qvl._enqueue_%s() FROM PUBLIC', v.id);
END
$$;

-- qvl._key_changed_<id>(old, new): whether an UPDATE changed the row's key, the key triggers' WHEN. A
-- WHEN naming the key columns would make Postgres refuse to retype them (a trigger depends on every
-- column it names), and the schema guard follows a widened key. This function names them instead:
-- Postgres inlines it into the WHEN (the same column comparison, no call per row), and the trigger
-- depends on the whole row only. Polymorphic: a partition's row type is another type. Re-made when the
-- guard follows a renamed key; EXECUTE for everyone (qvl._secure_vectorizer): whoever updates the table
-- evaluates it.
CREATE OR REPLACE FUNCTION qvl._create_key_function(v qvl.vectorizer) RETURNS void LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    EXECUTE format('CREATE OR REPLACE FUNCTION qvl._key_changed_%s(old anyelement, new anyelement) RETURNS boolean '
                   'LANGUAGE sql IMMUTABLE AS %L', v.id,
                   format('SELECT NOT (%s)', qvl._same_key_sql(v, 'old.', 'new.')));
END
$$;


-- The triggers of the vectorizer's mode (see qvl._trigger_names), replacing whatever triggers it had.
CREATE OR REPLACE FUNCTION qvl._create_triggers(v qvl.vectorizer) RETURNS void LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    watched text;
    changed text;
    names name[] := qvl._mode_trigger_names(v.id, v.mode);  -- insert, update, key before, key after, truncate[, delete]
    trig name;
    key_changed text := format('WHEN (qvl._key_changed_%s(OLD, NEW)) ', v.id);
BEGIN
    SELECT string_agg(format('%I', c), ', '), string_agg(format('OLD.%1$I IS DISTINCT FROM NEW.%1$I', c), ' OR ')
      INTO watched, changed
      FROM unnest(v.text_columns || v.image_columns || v.video_columns || qvl._document_columns(v)) AS c;
    PERFORM qvl._mark_trigger_change(v.id, true);
    PERFORM qvl._drop_triggers(v.id, v.source);
    PERFORM qvl._create_enqueue_function(v);
    PERFORM qvl._create_key_function(v);
    IF v.mode = 'async' THEN
        EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %s FOR EACH ROW EXECUTE FUNCTION qvl._enqueue_%s()',
                       names[1], v.source, v.id);
        EXECUTE format('CREATE TRIGGER %I AFTER UPDATE OF %s ON %s FOR EACH ROW WHEN (%s) '
                       'EXECUTE FUNCTION qvl._enqueue_%s()', names[2], watched, v.source, changed, v.id);
    ELSE
        EXECUTE format('CREATE TRIGGER %I BEFORE INSERT ON %s FOR EACH ROW EXECUTE FUNCTION qvl._sync_embed(%L)',
                       names[1], v.source, v.id);
        EXECUTE format('CREATE TRIGGER %I BEFORE UPDATE OF %s ON %s FOR EACH ROW WHEN (%s) '
                       'EXECUTE FUNCTION qvl._sync_embed(%L)', names[2], watched, v.source, changed, v.id);
    END IF;
    -- Postgres refuses the whole new row in a BEFORE trigger's WHEN on a table with generated columns:
    -- there the function is called for every updated row and compares the keys itself.
    EXECUTE format('CREATE TRIGGER %I BEFORE UPDATE ON %s FOR EACH ROW %sEXECUTE FUNCTION qvl._enqueue_%s()',
                   names[3], v.source,
                   CASE WHEN EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = v.source AND a.attnum > 0
                                        AND NOT a.attisdropped AND a.attgenerated <> '') THEN ''
                        ELSE key_changed END, v.id);
    EXECUTE format('CREATE TRIGGER %I AFTER UPDATE ON %s FOR EACH ROW %sEXECUTE FUNCTION qvl._enqueue_%s()',
                   names[4], v.source, key_changed, v.id);
    EXECUTE format('CREATE TRIGGER %I AFTER TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION qvl._enqueue_%s()',
                   names[5], v.source, v.id);
    IF cardinality(names) > 5 THEN  -- a chunked vectorizer: a row's chunks go with it
        EXECUTE format('CREATE TRIGGER %I AFTER DELETE ON %s FOR EACH ROW EXECUTE FUNCTION qvl._enqueue_%s()',
                       names[6], v.source, v.id);
    END IF;
    -- One statement: the schema guard warns of a vectorizer trigger that is not ALWAYS at the end of
    -- each ALTER TABLE, so all must be ALWAYS by then.
    EXECUTE format('ALTER TABLE %s ', v.source)
            || (SELECT string_agg(format('ENABLE ALWAYS TRIGGER %I', n), ', ') FROM unnest(names) AS n);
    FOREACH trig IN ARRAY names LOOP
        EXECUTE format('COMMENT ON TRIGGER %I ON %s IS %L', trig, v.source, qvl._trigger_comment());
    END LOOP;
    PERFORM qvl._mark_trigger_change(v.id, false);
END
$$;

-- Whether the vectorizer's table has exactly the triggers qvl._create_triggers makes now (an older qvl
-- made fewer, or other ones).
CREATE OR REPLACE FUNCTION qvl._triggers_current(v qvl.vectorizer) RETURNS boolean LANGUAGE sql STABLE
SET search_path = pg_catalog AS $$
    SELECT coalesce(array_agg(t.tgname::text ORDER BY t.tgname::text COLLATE "C")
                        FILTER (WHERE obj_description(t.oid, 'pg_trigger') = qvl._trigger_comment()), '{}')
           = (SELECT array_agg(n::text ORDER BY n::text COLLATE "C")
                FROM unnest(qvl._mode_trigger_names(v.id, v.mode)) AS n)
           AND count(*) = cardinality(qvl._mode_trigger_names(v.id, v.mode))
      FROM pg_trigger t
     WHERE t.tgrelid = v.source AND NOT t.tgisinternal AND t.tgname = ANY (qvl._trigger_names(v.id))
$$;

-- Every install (sql/idempotent/010_*): every vectorizer gets the generated functions and triggers of
-- this version. The functions are always re-made (no lock on the table); the triggers only when they
-- are not current, since re-making them locks the table. A vectorizer that cannot take them (a column
-- renamed before the schema guard existed: the guard refuses its table's changes until it is renamed
-- back) keeps what it has, with a WARNING: the install goes on.
CREATE OR REPLACE FUNCTION qvl._refresh_triggers() RETURNS void LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v qvl.vectorizer;
BEGIN
    FOR v IN SELECT x.* FROM qvl.vectorizer x WHERE EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = x.source)
              ORDER BY x.id LOOP
        BEGIN
            IF qvl._triggers_current(v) THEN
                PERFORM qvl._create_enqueue_function(v);
                PERFORM qvl._create_key_function(v);
            ELSE
                PERFORM qvl._create_triggers(v);
                RAISE NOTICE 'qvl: the triggers of vectorizer % on % were re-made for this version', v.name, v.source;
            END IF;
            PERFORM qvl._secure_vectorizer(v.id);
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'qvl: the triggers of vectorizer % on % were left as they were: %', v.name, v.source,
                    SQLERRM
                USING HINT = 'Put the table back as the vectorizer knows it (its columns and key), then install '
                             'again (qvl pg install).';
        END;
    END LOOP;
END
$$;


CREATE OR REPLACE FUNCTION qvl._install_objects(vid int) RETURNS void LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v qvl.vectorizer;
BEGIN
    SELECT * INTO STRICT v FROM qvl.vectorizer WHERE id = vid;
    PERFORM qvl._create_queue_tables(v);
    PERFORM qvl._create_triggers(v);
    PERFORM qvl._secure_vectorizer(vid);
END
$$;


-- Sync mode's work on one row, in PL/Python: {destination: its value}. The row comes as JSON: PL/Python
-- takes no anyelement nor record argument (lib.json_row reads it back). Called by qvl._sync_embed only
-- (qvl_trigger may: qvl._ensure_trigger_role).
CREATE OR REPLACE FUNCTION qvl._sync_row(vid int, new json) RETURNS jsonb LANGUAGE plpython3u VOLATILE
SET search_path = pg_catalog, pg_temp AS $py$
# qvl:prologue
return lib.sync_row(vid, new)
$py$;

-- Sync mode's trigger function; owned by qvl_trigger (qvl._ensure_trigger_role), like qvl._enqueue_<id>.
-- PL/pgSQL (it was PL/Python: CREATE OR REPLACE changes the language under the same oid, so the triggers
-- made before call this one) so that qvl._bare_errors gives it the handler that drops the Python
-- traceback from a refused row's error, as the public functions have. bytea_output: the row's bytes reach
-- the body as hex, whatever the writer's session says (escape would be misread).
CREATE OR REPLACE FUNCTION qvl._sync_embed() RETURNS trigger LANGUAGE plpgsql VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET bytea_output = hex AS $$
BEGIN
    NEW := jsonb_populate_record(NEW, qvl._sync_row(TG_ARGV[0]::int, to_json(NEW)));
    RETURN NEW;
END
$$;


CREATE OR REPLACE FUNCTION qvl._index_sql(v qvl.vectorizer) RETURNS text LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT format('CREATE INDEX IF NOT EXISTS %I ON %s USING hnsw (%I %s.%s)',
                  left(c.relname || '_' || v.destination || '_hnsw', 63), v.source, v.destination,
                  qvl._vector_schema(),
                  CASE v.storage WHEN 'vector' THEN 'vector_cosine_ops' WHEN 'halfvec' THEN 'halfvec_cosine_ops'
                                 ELSE 'bit_hamming_ops' END)
      FROM pg_class c WHERE c.oid = v.source
$$;


-- Queues every row of the table (the backfill, qvl.reembed), each with its tries forgotten (as a
-- change of the row does, in the trigger above: new input starts over). row_security off: a caller
-- whom a policy would show only some rows gets an error, not a backfill that silently leaves the
-- others out.
CREATE OR REPLACE FUNCTION qvl._queue_all(vid int) RETURNS bigint LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp SET row_security = off AS $$
DECLARE
    v qvl.vectorizer;
    cols text;
    n bigint;
BEGIN
    SELECT * INTO STRICT v FROM qvl.vectorizer WHERE id = vid;
    SELECT string_agg(format('%I', c), ', ') INTO cols FROM unnest(v.pk_columns) AS c;
    EXECUTE format('INSERT INTO qvl.queue_%s (%s) SELECT %s FROM %s ON CONFLICT (%s) DO UPDATE '
                   'SET claimed_until = NULL, claimed_by = NULL, not_before = NULL, attempts = 0, last_error = NULL',
                   vid, cols, cols, v.source, cols);
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM pg_notify('qvl_queue', vid::text);
    RETURN n;
END
$$;


-- The HNSW index over the destination column, for vectorizers created with index => 'hnsw'.
CREATE OR REPLACE FUNCTION qvl._create_index(vid int) RETURNS void LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v qvl.vectorizer;
BEGIN
    SELECT * INTO STRICT v FROM qvl.vectorizer WHERE id = vid;
    -- The index of a dropped vectorizer stays with its column: a new one on that column keeps it
    -- (CREATE INDEX IF NOT EXISTS would say "already exists, skipping").
    IF v.index_kind = 'hnsw' AND NOT EXISTS (
        SELECT 1 FROM pg_class c JOIN pg_class i ON i.relnamespace = c.relnamespace
         WHERE c.oid = v.source AND i.relname = left(c.relname || '_' || v.destination || '_hnsw', 63)) THEN
        EXECUTE qvl._index_sql(v);
    END IF;
END
$$;
