-- qvl 003: vectorizers, whose rights their code runs with: the trigger functions' own role
-- (qvl_trigger), writes to a user's table as its owner, and who may read a vectorizer's counts.
--
-- Re-applied by every install (sql/idempotent/); one of version 3's four files (their order:
-- 003_vectorizer_objects.sql).

-- Whose rights the trigger functions run with. They are SECURITY DEFINER (whoever may write a
-- table may queue its rows, without rights on qvl), and the row they handle is the writer's: a
-- domain CHECK on one of its columns runs as the current user whenever a value is converted to
-- the domain (PL/Python handing the row back, a key going into the queue). Owned by the installing
-- superuser, that let a role that owns such a domain's function run it as a superuser. So they are
-- owned by qvl_trigger: NOLOGIN, no role attributes, member of no role, allowed only what the
-- triggers do (read qvl.vectorizer, call qvl._call and qvl._load, write the queues, forget failures,
-- record a vectorizer's model).
-- ALTER FUNCTION ... OWNER TO qvl_trigger. A role that is no superuser (managed Postgres) may give a
-- function only to a role that may create in its schema: qvl_trigger gets CREATE on qvl for that
-- statement alone (one transaction: nobody sees it), never to keep (code running as qvl_trigger could
-- then put functions into qvl).
CREATE OR REPLACE FUNCTION qvl._own_by_trigger_role(f regprocedure) RETURNS void LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    lend boolean := NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
                    AND NOT has_schema_privilege('qvl_trigger', 'qvl', 'CREATE');
BEGIN
    IF lend THEN
        GRANT CREATE ON SCHEMA qvl TO qvl_trigger;
    END IF;
    EXECUTE format('ALTER FUNCTION %s OWNER TO qvl_trigger', f);
    IF lend THEN
        REVOKE CREATE ON SCHEMA qvl FROM qvl_trigger;
    END IF;
END
$$;

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
    -- A role that is no superuser (managed Postgres: CREATEROLE) hands functions to qvl_trigger only as
    -- its member (ALTER FUNCTION ... OWNER TO below and per vectorizer).
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
       AND NOT pg_has_role(current_user, 'qvl_trigger', 'MEMBER') THEN
        EXECUTE format('GRANT qvl_trigger TO %I', current_user);
    END IF;
    GRANT USAGE ON SCHEMA qvl TO qvl_trigger;
    GRANT SELECT ON qvl.vectorizer TO qvl_trigger;
    GRANT EXECUTE ON FUNCTION qvl._call(text, text), qvl._load() TO qvl_trigger;
    IF to_regprocedure('qvl._record_model(int, text, text)') IS NOT NULL THEN  -- version 11: sync mode's first write
        GRANT EXECUTE ON FUNCTION qvl._record_model(int, text, text) TO qvl_trigger;
    END IF;
    IF to_regclass('qvl.cut_rows') IS NOT NULL THEN  -- version 12: sync mode records the rows it stored cut
        GRANT SELECT, INSERT, UPDATE, DELETE ON qvl.cut_rows TO qvl_trigger;
    END IF;
    GRANT EXECUTE ON FUNCTION qvl._sync_row(int, json) TO qvl_trigger;  -- qvl._sync_embed's body
    PERFORM qvl._own_by_trigger_role('qvl._sync_embed()');
END
$$;

-- One vectorizer's share: its queue (DELETE: a key change drops the old key's entry, TRUNCATE all), and
-- its queueing trigger function; and the worker's rights on its table, queue and failed table
-- (qvl._grant_worker, sql/idempotent/003_grants.sql). The key triggers' WHEN function is everyone's to
-- call (it compares two rows the caller has anyway).
CREATE OR REPLACE FUNCTION qvl._secure_vectorizer(vid int) RETURNS void LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    chunks regclass;
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
        PERFORM qvl._own_by_trigger_role(format('qvl._enqueue_%s()', vid)::regprocedure);
    END IF;
    -- A chunked vectorizer's chunks (version 13): a deleted row's, a key change's, TRUNCATE's go.
    FOR chunks IN SELECT qvl._chunk_table(v) FROM qvl.vectorizer v WHERE v.id = vid AND qvl._chunk_table(v) IS NOT NULL
    LOOP
        EXECUTE format('GRANT SELECT, DELETE ON %s TO qvl_trigger', chunks);
    END LOOP;
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
