-- qvl 014: errors without a traceback (issue 24). PL/Python adds its traceback to every error's CONTEXT
-- (plpy.error too), and a PL/pgSQL function adds a line per nested call: five lines or more that drown
-- the message and the hint. A RAISE adds one line, its own, and the lines of nested calls end there. So,
-- after every install has applied the files, qvl._bare_errors() (called by the installer, last) gives
-- each public entry point an outermost handler that raises the error again with its SQLSTATE,
-- message, detail, hint and object names, and nothing else:
--  - a public PL/Python function keeps its body as qvl._raw_<name> (same signature and attributes) and
--    becomes, under its own oid (so its grants, owner and comment stay), a PL/pgSQL function calling it;
--  - a public PL/pgSQL function gets its own body as an inner block with that handler.
-- The handler is a subtransaction per call (measured: docs/postgres.md, "SQL functions"). Functions named
-- with a leading underscore are internal and keep their errors as they are; a new public function is
-- covered without a line here. One internal function is a writer's entry point too: a sync vectorizer's
-- trigger, qvl._sync_embed (PL/pgSQL calling its PL/Python body, qvl._sync_row), gets the handler alike.

-- The handler, as text (the RAISE must be in the outermost function: a helper would add its own line
-- and its caller's). RAISE refuses a NULL option and sends an empty one as given (psql would print
-- "DETAIL:  "), so detail and hint are chosen by branches; object names (a constraint's error) come
-- together.
CREATE OR REPLACE FUNCTION qvl._bare_error_handler() RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT $h$
EXCEPTION WHEN OTHERS THEN
    DECLARE
        e_state text; e_message text; e_detail text; e_hint text;
        e_schema text; e_table text; e_column text; e_constraint text; e_type text;
    BEGIN
        GET STACKED DIAGNOSTICS e_state = RETURNED_SQLSTATE, e_message = MESSAGE_TEXT,
            e_detail = PG_EXCEPTION_DETAIL, e_hint = PG_EXCEPTION_HINT, e_schema = SCHEMA_NAME,
            e_table = TABLE_NAME, e_column = COLUMN_NAME, e_constraint = CONSTRAINT_NAME, e_type = PG_DATATYPE_NAME;
        IF e_schema <> '' OR e_table <> '' OR e_column <> '' OR e_constraint <> '' OR e_type <> '' THEN
            RAISE EXCEPTION USING ERRCODE = e_state, MESSAGE = e_message, DETAIL = e_detail, HINT = e_hint,
                SCHEMA = e_schema, TABLE = e_table, COLUMN = e_column, CONSTRAINT = e_constraint, DATATYPE = e_type;
        ELSIF e_detail <> '' AND e_hint <> '' THEN
            RAISE EXCEPTION USING ERRCODE = e_state, MESSAGE = e_message, DETAIL = e_detail, HINT = e_hint;
        ELSIF e_detail <> '' THEN
            RAISE EXCEPTION USING ERRCODE = e_state, MESSAGE = e_message, DETAIL = e_detail;
        ELSIF e_hint <> '' THEN
            RAISE EXCEPTION USING ERRCODE = e_state, MESSAGE = e_message, HINT = e_hint;
        ELSE
            RAISE EXCEPTION USING ERRCODE = e_state, MESSAGE = e_message;
        END IF;
    END;
-- qvl:bare-errors
END$h$
$$;


-- A public PL/Python function f: its body (re)made as qvl._raw_<name>, then f itself made the PL/pgSQL
-- function that calls it, in place (CREATE OR REPLACE keeps f's oid, grants, owner and comment).
CREATE OR REPLACE FUNCTION qvl._bare_python(f oid) RETURNS void LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p pg_proc;
    raw text;
    args text;
    call text;
BEGIN
    SELECT * INTO STRICT p FROM pg_proc WHERE oid = f;
    raw := format('qvl.%I', '_raw_' || p.proname);
    IF NOT p.proretset AND p.prorettype = 'record'::regtype THEN
        RAISE EXCEPTION 'qvl: % has OUT parameters without SETOF, which qvl._bare_python does not wrap',
            f::regprocedure;
    END IF;
    EXECUTE regexp_replace(pg_get_functiondef(f), '^CREATE OR REPLACE FUNCTION qvl\.\S+?\(',
                           'CREATE OR REPLACE FUNCTION ' || raw || '(');
    args := format('%s(%s)', raw, pg_get_function_identity_arguments(f));
    EXECUTE format('ALTER FUNCTION %s OWNER TO %I', args, p.proowner::regrole);
    EXECUTE format('COMMENT ON FUNCTION %s IS %L', args,
                   format('The body of %s, whose errors it raises again without the Python traceback', f::regprocedure));
    SELECT string_agg(CASE WHEN i = p.pronargs AND p.provariadic <> 0 THEN 'VARIADIC ' ELSE '' END || '$' || i, ', '
                      ORDER BY i) INTO call FROM generate_series(1, p.pronargs) AS i;
    call := format('%s(%s)', raw, coalesce(call, ''));
    call := CASE WHEN p.proretset THEN 'RETURN QUERY SELECT * FROM ' || call || ';'
                 WHEN p.prorettype = 'void'::regtype THEN 'PERFORM ' || call || '; RETURN;'
                 ELSE 'RETURN ' || call || ';' END;
    -- pg_get_functiondef writes every attribute (volatility, strictness, SECURITY, PARALLEL, COST, ROWS, SET):
    -- only the language and the body change.
    EXECUTE replace(replace(pg_get_functiondef(f), format(E'\n LANGUAGE %s\n', (SELECT lanname FROM pg_language
                                                                               WHERE oid = p.prolang)),
                            E'\n LANGUAGE plpgsql\n'),
                    p.prosrc, E'\nBEGIN\n    ' || call || qvl._bare_error_handler() || E'\n');
END
$$;


-- A public PL/pgSQL function f: its body as a block inside one with the handler (compiler options such
-- as #variable_conflict stay first). Its own trailing semicolon, if any, is dropped: the block gets one.
CREATE OR REPLACE FUNCTION qvl._bare_plpgsql(f oid) RETURNS void LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    src text := (SELECT prosrc FROM pg_proc WHERE oid = f);
    options text := coalesce(substring(src FROM '^(?:\s*#[^\n]*\n)*'), '');
    body text := regexp_replace(substr(src, length(options) + 1), ';?\s*$', '');
BEGIN
    EXECUTE replace(pg_get_functiondef(f), src,
                    options || E'BEGIN\n' || body || ';' || qvl._bare_error_handler() || E'\n');
END
$$;


-- Every public entry point, as the files above made it; then the bodies no public function calls now
-- (the managed install replaced them by refusals, or a later qvl dropped the function) are dropped.
CREATE OR REPLACE FUNCTION qvl._bare_errors() RETURNS void LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    f record;
    wrapped oid[] := '{}';
BEGIN
    FOR f IN SELECT p.oid, l.lanname FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
              WHERE p.pronamespace = 'qvl'::regnamespace AND p.prokind = 'f'
                AND ((p.proname !~ '^_' AND p.prorettype NOT IN ('trigger'::regtype, 'event_trigger'::regtype))
                     OR p.oid = 'qvl._sync_embed()'::regprocedure)  -- a sync vectorizer's refusal of a row
                AND (l.lanname = 'plpython3u' OR (l.lanname = 'plpgsql' AND p.prosrc NOT LIKE '%-- qvl:bare-errors%'))
              ORDER BY p.oid LOOP
        IF f.lanname = 'plpython3u' THEN
            PERFORM qvl._bare_python(f.oid);
            wrapped := wrapped || f.oid;
        ELSE
            PERFORM qvl._bare_plpgsql(f.oid);
        END IF;
    END LOOP;
    FOR f IN SELECT r.oid FROM pg_proc r
              WHERE r.pronamespace = 'qvl'::regnamespace AND r.proname LIKE '\_raw\_%'
                AND NOT EXISTS (SELECT 1 FROM pg_proc p WHERE p.oid = ANY (wrapped) AND r.proname = '_raw_' || p.proname
                                   AND r.proargtypes = p.proargtypes) LOOP
        EXECUTE format('DROP FUNCTION %s', f.oid::regprocedure);
    END LOOP;
END
$$;
