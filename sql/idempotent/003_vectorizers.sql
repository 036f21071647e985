-- qvl 003: vectorizers. A vectorizer keeps a vector column of a table in step with some of its
-- columns (text, images, video: one joint item per row).
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
-- sql/incremental/001_schema.sql.

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
-- "zzz": BEFORE triggers fire in name order, so these see what other BEFORE triggers wrote.
CREATE OR REPLACE FUNCTION qvl._trigger_names(vid int) RETURNS name[] LANGUAGE sql IMMUTABLE AS $$
    SELECT ARRAY[format('qvl_%s_insert', vid), format('qvl_%s_update', vid),
                 format('zzz_qvl_%s_insert', vid), format('zzz_qvl_%s_update', vid),
                 format('zzz_qvl_%s_key', vid), format('qvl_%s_key', vid), format('qvl_%s_truncate', vid)]::name[]
$$;

-- The names of the triggers a vectorizer of this mode has.
CREATE OR REPLACE FUNCTION qvl._mode_trigger_names(vid int, mode text) RETURNS name[] LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE mode WHEN 'async' THEN (qvl._trigger_names(vid))[1:2] ELSE (qvl._trigger_names(vid))[3:4] END
           || (qvl._trigger_names(vid))[5:7]
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
BEGIN
    SELECT string_agg(format('%I', c), ', ' ORDER BY o), string_agg(format('NEW.%I', c), ', ' ORDER BY o)
      INTO pk_cols, new_vals
      FROM unnest(v.pk_columns) WITH ORDINALITY AS u(c, o);
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
                    RETURN NEW;
                ELSIF TG_OP OPERATOR(pg_catalog.=) 'TRUNCATE' THEN
                    DELETE FROM qvl.queue_%1$s;
                    DELETE FROM qvl.failed_%1$s;
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
    $f$, v.id, pk_cols, new_vals, qvl._same_key_sql(v, 'q.', 'OLD.'), qvl._same_key_sql(v, 'OLD.', 'NEW.'));
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
    names name[] := qvl._mode_trigger_names(v.id, v.mode);  -- insert, update, key before, key after, truncate
    trig name;
    key_changed text := format('WHEN (qvl._key_changed_%s(OLD, NEW)) ', v.id);
BEGIN
    SELECT string_agg(format('%I', c), ', '), string_agg(format('OLD.%1$I IS DISTINCT FROM NEW.%1$I', c), ' OR ')
      INTO watched, changed
      FROM unnest(v.text_columns || v.image_columns || v.video_columns) AS c;
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


-- Whose rights the trigger functions run with. They are SECURITY DEFINER (whoever may write a
-- table may queue its rows, without rights on qvl), and the row they handle is the writer's: a
-- domain CHECK on one of its columns runs as the current user whenever a value is converted to
-- the domain (PL/Python handing the row back, a key going into the queue). Owned by the installing
-- superuser, that let a role that owns such a domain's function run it as a superuser. So they are
-- owned by qvl_trigger: NOLOGIN, no role attributes, member of no role, allowed only what the
-- triggers do (read qvl.vectorizer, call qvl._call and qvl._load, write the queues, forget failures).
CREATE OR REPLACE FUNCTION qvl._ensure_trigger_role() RETURNS void LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'qvl_trigger') THEN
        BEGIN
            CREATE ROLE qvl_trigger NOLOGIN NOINHERIT;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- an install into another database of the cluster made it just now
        END;
    END IF;
    -- Roles belong to the whole cluster: whatever it was given since (or in another database), take it
    -- back (only when needed: installs into two databases at once would both update the role).
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'qvl_trigger'
                  AND (rolsuper OR rolcanlogin OR rolcreatedb OR rolcreaterole OR rolreplication OR rolbypassrls
                       OR rolinherit)) THEN
        ALTER ROLE qvl_trigger NOSUPERUSER NOLOGIN NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_auth_members WHERE member = 'qvl_trigger'::regrole) THEN
        RAISE EXCEPTION 'qvl: role qvl_trigger, which qvl''s trigger functions run as, is a member of %',
                (SELECT string_agg(roleid::regrole::text, ', ') FROM pg_auth_members
                  WHERE member = 'qvl_trigger'::regrole)
            USING ERRCODE = '42501', HINT = 'It must hold no other role''s rights: REVOKE ... FROM qvl_trigger;';
    END IF;
    GRANT USAGE ON SCHEMA qvl TO qvl_trigger;
    GRANT SELECT ON qvl.vectorizer TO qvl_trigger;
    GRANT EXECUTE ON FUNCTION qvl._call(text, text), qvl._load() TO qvl_trigger;
    ALTER FUNCTION qvl._sync_embed() OWNER TO qvl_trigger;
END
$$;

-- One vectorizer's share: its queue (DELETE: a key change drops the old key's entry, TRUNCATE all), and
-- its queueing trigger function; and the worker's rights on its table, queue and failed table
-- (qvl._grant_worker, sql/idempotent/003_grants.sql). The key triggers' WHEN function is everyone's to
-- call (it compares two rows the caller has anyway).
CREATE OR REPLACE FUNCTION qvl._secure_vectorizer(vid int) RETURNS void LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM qvl._ensure_trigger_role();
    PERFORM qvl._grant_worker(vid);
    IF to_regclass(format('qvl.queue_%s', vid)) IS NOT NULL THEN
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON qvl.queue_%s TO qvl_trigger', vid);
    END IF;
    IF to_regprocedure(format('qvl._key_changed_%s(anyelement, anyelement)', vid)) IS NOT NULL THEN
        EXECUTE format('GRANT EXECUTE ON FUNCTION qvl._key_changed_%s(anyelement, anyelement) TO PUBLIC', vid);
    END IF;
    IF to_regclass(format('qvl.failed_%s', vid)) IS NOT NULL THEN  -- a fixed row's (sync), a key change's, TRUNCATE
        EXECUTE format('GRANT SELECT, DELETE ON qvl.failed_%s TO qvl_trigger', vid);
    END IF;
    IF to_regprocedure(format('qvl._enqueue_%s()', vid)) IS NOT NULL THEN
        EXECUTE format('ALTER FUNCTION qvl._enqueue_%s() OWNER TO qvl_trigger', vid);
    END IF;
END
$$;

-- Every install: the role, and every vectorizer's objects (those of older versions included).
CREATE OR REPLACE FUNCTION qvl._secure_triggers() RETURNS void LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    vid int;
BEGIN
    PERFORM qvl._ensure_trigger_role();
    FOR vid IN SELECT id FROM qvl.vectorizer ORDER BY id LOOP
        PERFORM qvl._secure_vectorizer(vid);
    END LOOP;
END
$$;


-- Sync mode's trigger function; owned by qvl_trigger (qvl._ensure_trigger_role), like qvl._enqueue_<id>.
CREATE OR REPLACE FUNCTION qvl._sync_embed() RETURNS trigger LANGUAGE plpython3u VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $py$
# qvl:prologue
return lib.sync_trigger(TD)
$py$;


-- Checks a storage/dimensions/index choice against pgvector's limits; returns the column type.
CREATE OR REPLACE FUNCTION qvl._vector_type(storage text, dimensions int, index_kind text) RETURNS text LANGUAGE plpgsql
STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    hnsw_max int := CASE storage WHEN 'vector' THEN 2000 WHEN 'halfvec' THEN 4000 ELSE 64000 END;
BEGIN
    IF dimensions IS NULL OR dimensions < 1 THEN
        RAISE EXCEPTION 'qvl: dimensions must be positive, got %', dimensions USING ERRCODE = '22023';
    END IF;
    IF storage IN ('vector', 'halfvec') AND dimensions > 16000 THEN
        RAISE EXCEPTION 'qvl: pgvector stores at most 16000 dimensions in a %, asked for %', storage, dimensions
            USING ERRCODE = '54000', HINT = 'Keep fewer dimensions (dimensions => 1024) or use storage => ''bit''.';
    END IF;
    IF index_kind = 'hnsw' AND dimensions > hnsw_max THEN
        RAISE EXCEPTION 'qvl: pgvector''s HNSW index takes at most % dimensions of %, asked for %',
                hnsw_max, storage, dimensions
            USING ERRCODE = '54000',
                  HINT = CASE storage
                      WHEN 'vector' THEN 'Keep the first dimensions (Matryoshka: dimensions => 1024 or 1536; the '
                          'model is trained for it), or store halfvec (up to 4000 indexed): storage => ''halfvec''; '
                          'or go without an index: index => ''none''.'
                      ELSE 'Keep fewer dimensions (dimensions => 2048), or index => ''none''.' END;
    END IF;
    RETURN CASE storage WHEN 'bit' THEN format('bit(%s)', dimensions)
                        ELSE format('%s.%s(%s)', qvl._vector_schema(), storage, dimensions) END;
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


-- qvl.create_vectorizer, step by step: each check raises the error that names what to change,
-- in the order below; then the column, the catalog row, the objects, the index and the backfill.

-- The source must be a table (plain or partitioned); returns its name (the default vectorizer name).
CREATE OR REPLACE FUNCTION qvl._check_source(source regclass) RETURNS name LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rel record;
BEGIN
    SELECT c.relname, c.relkind INTO rel FROM pg_class c WHERE c.oid = source;
    IF rel.relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION 'qvl: % is not a table', source USING ERRCODE = '42809';
    END IF;
    RETURN rel.relname;
END
$$;


CREATE OR REPLACE FUNCTION qvl._check_options(storage text, mode text, index_kind text, on_error text)
RETURNS void LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF storage IS NULL OR storage NOT IN ('vector', 'halfvec', 'bit') THEN
        RAISE EXCEPTION 'qvl: storage must be vector, halfvec or bit, got %', storage USING ERRCODE = '22023';
    END IF;
    IF mode IS NULL OR mode NOT IN ('async', 'sync') THEN
        RAISE EXCEPTION 'qvl: mode must be async or sync, got %', mode USING ERRCODE = '22023';
    END IF;
    IF index_kind IS NULL OR index_kind NOT IN ('hnsw', 'none') THEN
        RAISE EXCEPTION 'qvl: index must be hnsw or none, got %', index_kind USING ERRCODE = '22023';
    END IF;
    IF on_error IS NULL OR on_error NOT IN ('fail', 'queue') THEN
        RAISE EXCEPTION 'qvl: on_error must be fail or queue, got %', on_error USING ERRCODE = '22023';
    END IF;
END
$$;


CREATE OR REPLACE FUNCTION qvl._check_new_name(vname text) RETURNS void LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM qvl.vectorizer v WHERE v.name = vname) THEN
        RAISE EXCEPTION 'qvl: a vectorizer named % exists', vname USING ERRCODE = '42710',
            HINT = 'Pass another name => ..., or drop it first: SELECT qvl.drop_vectorizer(''' || vname || ''');';
    END IF;
END
$$;


-- The column lists as lists: something to embed, at most one video, no column twice, and the
-- destination none of them.
CREATE OR REPLACE FUNCTION qvl._check_column_lists(text_columns text[], image_columns text[], video_columns text[],
                                                   destination name)
RETURNS void LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    all_cols text[] := text_columns || image_columns || video_columns;
BEGIN
    IF cardinality(all_cols) = 0 THEN
        RAISE EXCEPTION 'qvl: a vectorizer needs at least one column to embed' USING ERRCODE = '22023',
            HINT = 'Pass text_columns => ARRAY[...], image_columns => ARRAY[...] or video_columns => ARRAY[...].';
    END IF;
    IF cardinality(video_columns) > 1 THEN
        RAISE EXCEPTION 'qvl: one video column per vectorizer (an item holds one video)' USING ERRCODE = '22023';
    END IF;
    IF (SELECT count(DISTINCT c) FROM unnest(all_cols) AS c) <> cardinality(all_cols) THEN
        RAISE EXCEPTION 'qvl: a column is listed twice in %', all_cols USING ERRCODE = '22023';
    END IF;
    IF destination = ANY (all_cols) THEN
        RAISE EXCEPTION 'qvl: the destination % is also an input column', destination USING ERRCODE = '22023';
    END IF;
END
$$;


-- Every input column exists and has a type its role takes (text: text-like; image and video: also
-- bytea or bytea[]); sync mode cannot read generated columns.
CREATE OR REPLACE FUNCTION qvl._check_input_columns(source regclass, text_columns text[], image_columns text[],
                                                    video_columns text[], mode text)
RETURNS void LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    att record;
    col text;
    role text;
    listing text;
BEGIN
    SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO listing
      FROM pg_attribute a WHERE a.attrelid = source AND a.attnum > 0 AND NOT a.attisdropped;
    FOR col, role IN SELECT c, 'text' FROM unnest(text_columns) AS c
                     UNION ALL SELECT c, 'image' FROM unnest(image_columns) AS c
                     UNION ALL SELECT c, 'video' FROM unnest(video_columns) AS c LOOP
        SELECT a.attgenerated, t.typcategory AS cat, t.oid AS typ, coalesce(e.typcategory, '') AS elem_cat,
               coalesce(e.oid, 0) AS elem
          INTO att
          FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
          LEFT JOIN pg_type e ON e.oid = t.typelem AND t.typcategory = 'A'
         WHERE a.attrelid = source AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'qvl: % has no column %', source, col USING ERRCODE = '42703',
                HINT = 'Its columns: ' || listing;
        END IF;
        IF NOT (att.cat = 'S' OR att.elem_cat = 'S'
                OR (role <> 'text' AND (att.typ = 'bytea'::regtype OR att.elem = 'bytea'::regtype))) THEN
            RAISE EXCEPTION 'qvl: column % has type %, which cannot be a % input', col, att.typ::regtype, role
                USING ERRCODE = '42804',
                HINT = CASE role WHEN 'text' THEN 'Text columns are text/varchar (or arrays); for other types add a '
                                    'generated column: ADD COLUMN x text GENERATED ALWAYS AS (...) STORED.'
                                 ELSE 'Media columns hold bytes (bytea; bytea[] = several images or a video''s '
                                    'frames) or a path/URI (text) that the service may read.' END;
        END IF;
        IF mode = 'sync' AND att.attgenerated <> '' THEN
            RAISE EXCEPTION 'qvl: % is a generated column, which BEFORE triggers cannot see', col
                USING ERRCODE = '0A000', HINT = 'Use mode => ''async'' for generated columns.';
        END IF;
    END LOOP;
END
$$;


-- A destination column belongs to one vectorizer: a second one writing it would overwrite the
-- first one's vectors with its own (caption-only over caption+image), and qvl.search would read
-- whichever came last. A partitioned table's column is its partitions' column too. The lock makes
-- the check and the new catalog row one step: a creation waits for another one in progress to
-- commit, then sees it (reads of qvl.vectorizer, the worker's included, do not wait).
CREATE OR REPLACE FUNCTION qvl._check_destination_free(source regclass, destination name, vname text)
RETURNS void LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    owner record;
BEGIN
    LOCK TABLE qvl.vectorizer IN SHARE ROW EXCLUSIVE MODE;
    SELECT v.name, v.source, array_to_string(v.text_columns || v.image_columns || v.video_columns, ', ') AS inputs
      INTO owner
      FROM qvl.vectorizer v
     WHERE v.destination = destination
       AND (v.source = source
            OR v.source IN (SELECT a.relid FROM pg_partition_ancestors(source) AS a)
            OR v.source IN (SELECT t.relid FROM pg_partition_tree(source) AS t))
     ORDER BY v.id LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'qvl: column %.% is written by vectorizer % (% of %)', source, destination, owner.name,
                owner.inputs, owner.source USING ERRCODE = '42710',
            HINT = format('Give this one a column of its own: destination => %L; or replace that one: '
                          'SELECT qvl.drop_vectorizer(%L);', vname || '_embedding', owner.name);
    END IF;
END
$$;


-- The source's primary key columns and their types, in key order (the queue refers to rows by it).
CREATE OR REPLACE FUNCTION qvl._primary_key(source regclass, OUT pk_columns name[], OUT pk_types text[])
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    SELECT array_agg(a.attname ORDER BY k.ord), array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY k.ord)
      INTO pk_columns, pk_types
      FROM pg_index i
      CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
     WHERE i.indrelid = source AND i.indisprimary;
    IF pk_columns IS NULL THEN
        RAISE EXCEPTION 'qvl: % has no primary key', source USING ERRCODE = '42P16',
            HINT = 'The queue refers to rows by primary key: ALTER TABLE ... ADD PRIMARY KEY (...).';
    END IF;
END
$$;


-- Columns of qvl.queue_<id> and qvl.failed_<id> besides the key (and names the worker's SQL uses):
-- a key column may not take one of these names, at creation (below) or by a rename (the schema
-- guard, sql/idempotent/007_schema_guard.sql).
CREATE OR REPLACE FUNCTION qvl._queue_column_names() RETURNS name[] LANGUAGE sql IMMUTABLE AS $$
    SELECT ARRAY['queued_at', 'claimed_until', 'claimed_by', 'attempts', 'not_before', 'last_error', 'error',
                 'code', 'failed_at', 'qvl_hash', 'qvl_vec', 'qvl_error', 'qvl_code', 'qvl_delay']::name[]
$$;

CREATE OR REPLACE FUNCTION qvl._check_key_names(source regclass, pk_columns name[]) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    clash name;
BEGIN
    SELECT c INTO clash FROM unnest(pk_columns) AS c WHERE c = ANY (qvl._queue_column_names()) LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'qvl: the key column % of % has the name of a column of qvl''s queue tables', clash, source
            USING ERRCODE = '42701',
                  HINT = format('Rename it (ALTER TABLE %s RENAME COLUMN %I TO ...), then create the vectorizer; '
                                'these names are taken: %s.', source, clash,
                                array_to_string(qvl._queue_column_names(), ', '));
    END IF;
END
$$;


-- dimensions => NULL: the embedding model's full size, as the service reports it.
CREATE OR REPLACE FUNCTION qvl._full_dimensions() RETURNS int LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    dimensions int;
BEGIN
    BEGIN
        SELECT (m->>'hidden_size')::int INTO dimensions
          FROM jsonb_array_elements(qvl.service_info()->'models') AS m WHERE m->>'task' = 'embed';
    EXCEPTION WHEN OTHERS THEN
        RAISE EXCEPTION 'qvl: dimensions => NULL means the model''s full size, and the service could not say: %',
                SQLERRM USING ERRCODE = '08001',
                HINT = 'Start the service (see qvl.set_service), or pass dimensions => N.';
    END;
    IF dimensions IS NULL THEN
        RAISE EXCEPTION 'qvl: the service serves no embedding model' USING ERRCODE = '22023',
            HINT = 'Start qvl serve with --embedding-model.';
    END IF;
    RETURN dimensions;
END
$$;


-- The embedding model's size as the service reports it; NULL when the service cannot say now.
CREATE OR REPLACE FUNCTION qvl._model_dimensions() RETURNS int LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    size int;
BEGIN
    SELECT (m->>'hidden_size')::int INTO size
      FROM jsonb_array_elements(qvl.service_info()->'models') AS m WHERE m->>'task' = 'embed';
    RETURN size;
EXCEPTION WHEN OTHERS THEN
    RETURN NULL;
END
$$;


-- Refuses dimensions the service would refuse for every row (too few, or more than the model
-- gives), by asking it: one embedding of a short text at that size. Skipped when the service
-- cannot say now (model_size NULL): the worker then pauses on such a vectorizer, failing no row.
CREATE OR REPLACE FUNCTION qvl._check_dimensions(dimensions int, model_size int) RETURNS void LANGUAGE plpgsql
VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    msg text;
    detail text;
BEGIN
    IF model_size IS NULL THEN
        RETURN;
    END IF;
    BEGIN
        PERFORM qvl.embed('qvl: a check of the dimensions', dimensions => dimensions);
    EXCEPTION WHEN invalid_parameter_value THEN
        GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, detail = PG_EXCEPTION_DETAIL;
        RAISE EXCEPTION 'qvl: the service''s embedding model cannot give % dimensions: %', dimensions,
                coalesce(regexp_replace(detail, '^\S+ \S+: ', ''), msg) USING ERRCODE = '22023', DETAIL = detail,
            HINT = format('The model has %s dimensions: pass dimensions => NULL (all %s), or fewer within the '
                          'service''s range (the first N of a Matryoshka embedding).', model_size, model_size);
    WHEN OTHERS THEN
        RETURN;  -- busy or gone since it answered: nothing learnt, nothing refused
    END;
END
$$;


-- The destination column: checked when it exists (it must have the vector type), else added.
CREATE OR REPLACE FUNCTION qvl._ensure_destination(source regclass, destination name, vtype text)
RETURNS void LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    att record;
BEGIN
    SELECT a.atttypid, a.atttypmod INTO att FROM pg_attribute a
     WHERE a.attrelid = source AND a.attname = destination AND a.attnum > 0 AND NOT a.attisdropped;
    IF FOUND THEN
        IF format_type(att.atttypid, att.atttypmod) <> vtype AND
           format_type(att.atttypid, att.atttypmod) <> regexp_replace(vtype, '^[^.]*\.', '') THEN
            RAISE EXCEPTION 'qvl: column %.% exists with type %, not %', source, destination,
                    format_type(att.atttypid, att.atttypmod), vtype USING ERRCODE = '42804',
                HINT = 'Choose another destination => ..., or drop or retype that column.';
        END IF;
    ELSE
        EXECUTE format('ALTER TABLE %s ADD COLUMN %I %s', source, destination, vtype);
    END IF;
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


-- Before hybrid search (fulltext) it had 13 parameters; that signature would make calls ambiguous.
-- (Dropped only where it exists: DROP ... IF EXISTS would NOTICE "does not exist, skipping" on
-- every fresh install and re-install.)
DO $$ BEGIN
    IF to_regprocedure('qvl.create_vectorizer(regclass, text, text[], text[], text[], name, int, text, text, text, '
                       'text, text, text)') IS NOT NULL THEN
        DROP FUNCTION qvl.create_vectorizer(regclass, text, text[], text[], text[], name, int, text, text, text,
                                            text, text, text);
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
    fulltext text DEFAULT NULL
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
    relname := qvl._check_source(source);
    vname := coalesce(name, relname);
    text_columns := coalesce(text_columns, '{}');
    image_columns := coalesce(image_columns, '{}');
    video_columns := coalesce(video_columns, '{}');
    PERFORM qvl._check_options(storage, mode, index, on_error);
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
                                          text, text, text) IS
    'Keep a vector column in step with text/image/video columns of a table (one joint item per row)';


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


-- What code run in this session could leave behind to run later with the session's rights: settings
-- (search_path aside: it is this function's own here, qvl._as_owner reads it), temporary objects (a
-- view that shadows a table), prepared statements (one a driver prepared, replaced) and cursors.
CREATE OR REPLACE FUNCTION qvl._session_state() RETURNS text LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT concat_ws(E'\n',
        (SELECT string_agg(s.name || '=' || s.setting, ',' ORDER BY s.name) FROM pg_settings s
          WHERE s.name NOT LIKE '%.%'),
        (SELECT string_agg(t.oid::text, ',' ORDER BY t.oid)
           FROM (SELECT c.oid FROM pg_class c WHERE c.relnamespace = pg_my_temp_schema()
                 UNION ALL SELECT y.oid FROM pg_type y WHERE y.typnamespace = pg_my_temp_schema()
                 UNION ALL SELECT p.oid FROM pg_proc p WHERE p.pronamespace = pg_my_temp_schema()) AS t),
        (SELECT string_agg(p.name || '@' || p.prepare_time, ',' ORDER BY p.name) FROM pg_prepared_statements p),
        (SELECT string_agg(c.name, ',' ORDER BY c.name) FROM pg_cursors c))
$$;


-- Runs one statement that writes a user's table (an UPDATE, an ALTER TABLE that rewrites it) as the
-- table's owner; tables and tids are its $1 and $2. Writing a table runs its owner's code (triggers,
-- CHECK constraints, index expressions) with the writer's rights, and qvl's management functions are
-- called by the installing superuser: as that caller, the code could do anything (ALTER ROLE ...
-- SUPERUSER). So the statement runs in a SECURITY DEFINER function owned by the table's owner, made
-- for it in pg_temp and dropped after: the code runs as the owner and cannot SET ROLE back (PostgreSQL
-- refuses that inside SECURITY DEFINER; SET LOCAL ROLE alone would let a trigger RESET ROLE). What the
-- code could leave in the session to run later as the caller (a search_path, a temporary view, a
-- prepared statement) is looked for afterwards: then the statement is refused and nothing stays.
CREATE OR REPLACE FUNCTION qvl._as_owner(source regclass, statement text, tables oid[] DEFAULT NULL,
                                         tids tid[] DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    owner name := (SELECT pg_get_userbyid(c.relowner) FROM pg_class c WHERE c.oid = source);
    path text := current_setting('search_path');
    prepared text[] := ARRAY(SELECT p.name || '@' || p.prepare_time FROM pg_prepared_statements p);
    before text;
    after_path text;
    stmt text;
    n bigint;
BEGIN
    EXECUTE 'CREATE FUNCTION pg_temp.qvl_as_owner(statement text, tables oid[], tids tid[]) RETURNS bigint '
            'LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET row_security = off '
            'AS $f$ DECLARE n bigint; BEGIN EXECUTE statement USING tables, tids; GET DIAGNOSTICS n = ROW_COUNT; '
            'RETURN n; END $f$';
    EXECUTE format('ALTER FUNCTION pg_temp.qvl_as_owner(text, oid[], tid[]) OWNER TO %I', owner);
    before := qvl._session_state();
    BEGIN
        EXECUTE 'SELECT pg_temp.qvl_as_owner($1, $2, $3)' INTO n USING statement, tables, tids;
        -- Before any name is looked up: the search_path the code left, then this function's again.
        after_path := pg_catalog.current_setting('search_path');
        PERFORM pg_catalog.set_config('search_path', path, true);
        IF after_path <> path OR qvl._session_state() <> before THEN
            RAISE EXCEPTION 'qvl: the code that % runs when written (its owner %''s triggers, constraints or index '
                            'expressions) changed this session: a setting, a temporary object, a prepared '
                            'statement or a cursor; nothing was done', source, owner
                USING ERRCODE = '42501',
                      HINT = 'qvl writes the table as its owner and refuses what could later run as you. A '
                             'trigger''s setting made in a SET clause of its function is undone as it returns.';
        END IF;
    EXCEPTION WHEN OTHERS THEN
        -- The rollback takes back settings, temporary objects and cursors; not prepared statements.
        FOR stmt IN SELECT p.name FROM pg_prepared_statements p WHERE p.name || '@' || p.prepare_time <> ALL (prepared)
        LOOP
            EXECUTE format('DEALLOCATE %I', stmt);
        END LOOP;
        RAISE;
    END;
    EXECUTE 'DROP FUNCTION pg_temp.qvl_as_owner(text, oid[], tid[])';
    RETURN n;
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
    has_column boolean;
    stale text[] := '{}';
    tbl text;
    tables oid[];
    tids tid[];
    cleared bigint := 0;
    kept bigint;
BEGIN
    IF source_exists THEN
        PERFORM qvl._drop_triggers(v.id, v.source);
        PERFORM qvl._revoke_worker(v);
        IF to_regprocedure('qvl.set_fulltext(text, text)') IS NOT NULL THEN  -- version 8: its full-text index
            PERFORM qvl.set_fulltext(v.name, NULL);
        END IF;
        has_column := EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = v.source
                                 AND a.attname = v.destination AND a.attnum > 0 AND NOT a.attisdropped);
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
    PERFORM pg_notify('qvl_config', v.id::text);
    IF kept IS NOT NULL THEN
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
-- emptied, the index rebuilt, and the worker fills it again.
CREATE OR REPLACE FUNCTION qvl.reembed(name text, dimensions int DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    v qvl.vectorizer := qvl._vectorizer(name);
    vtype text;
BEGIN
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


-- Whether the role calling a SECURITY DEFINER function of qvl may read the vectorizer's table.
-- Inside one, current_user is the function's owner; the caller's role is the one SET ROLE chose (the
-- setting "role", which a SECURITY DEFINER function does not change), else the login. The login alone
-- would show postgres under SET ROLE app what app may not read.
CREATE OR REPLACE FUNCTION qvl._may_read_source(vid int) RETURNS boolean LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce((SELECT has_table_privilege(CASE current_setting('role') WHEN 'none' THEN session_user::text
                                                    ELSE current_setting('role') END, v.source, 'SELECT')
                       FROM qvl.vectorizer v WHERE v.id = vid), false)
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


CREATE OR REPLACE VIEW qvl.vectorizer_status AS
SELECT v.name, v.source, v.mode, v.storage, v.dimensions, v.destination,
       s.pending, s.in_progress, s.failed, s.oldest_pending_age
  FROM qvl.vectorizer v CROSS JOIN LATERAL qvl._queue_stats(v.id) AS s;
COMMENT ON VIEW qvl.vectorizer_status IS
    'pending: rows waiting for (or being embedded by) the worker; failed: rows the service refused '
    '(counts NULL unless you may read the table)';


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
