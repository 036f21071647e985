-- qvl 003: who may query. Re-applied by every install; the installer then calls qvl._apply_grants
-- with the install's choice (public_grant, kept in qvl.config).

-- Who may query. Everything in qvl is private, then the query functions are opened to the grantee, each
-- with its body qvl._raw_<name> where it has one (014_error_wrappers: it runs as the caller too).
CREATE OR REPLACE FUNCTION qvl._query_functions() RETURNS name[] LANGUAGE sql IMMUTABLE AS $$
    SELECT f || ARRAY(SELECT ('_raw_' || n)::name FROM unnest(f) AS n) FROM (SELECT ARRAY['embed', 'embed_halfvec', 'rerank', 'search', 'wait_for_embeddings', 'service_info',
                 'query_embedding', 'query_embedding_halfvec', 'query_embedding_bit', 'rerank_rows', 'hybrid_search',
                 '_call', '_load', '_queue_stats', '_cut_count', '_check_key_type', '_rerank_rows', '_fulltext_document',
                 'search_chunks', '_call_for', '_shadow_stats', '_vector_probe']::name[]) AS q(f)
$$;

CREATE OR REPLACE FUNCTION qvl._grant_query_access(grantee text, allow boolean) RETURNS void LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    who text := CASE WHEN upper(grantee) = 'PUBLIC' THEN 'PUBLIC' ELSE quote_ident(grantee) END;
    verb text := CASE WHEN allow THEN 'GRANT' ELSE 'REVOKE' END;
    prep text := CASE WHEN allow THEN 'TO' ELSE 'FROM' END;
    f regprocedure;
BEGIN
    EXECUTE format('%s USAGE ON SCHEMA qvl %s %s', verb, prep, who);
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
              WHERE p.pronamespace = 'qvl'::regnamespace AND p.proname = ANY (qvl._query_functions()) LOOP
        EXECUTE format('%s EXECUTE ON FUNCTION %s %s %s', verb, f, prep, who);
    END LOOP;
    EXECUTE format('%s SELECT ON qvl.vectorizer, qvl.vectorizer_status %s %s', verb, prep, who);
END
$$;

CREATE OR REPLACE FUNCTION qvl._apply_grants(public_access boolean) RETURNS void LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    EXECUTE 'REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA qvl FROM PUBLIC';
    PERFORM qvl._grant_query_access('PUBLIC', public_access);
    -- A full-text index over text[] columns (version 8) calls qvl._fulltext_join as whoever writes
    -- the table: PostgreSQL checks EXECUTE on functions in index expressions too.
    IF to_regprocedure('qvl._fulltext_join(text[])') IS NOT NULL THEN
        GRANT EXECUTE ON FUNCTION qvl._fulltext_join(text[]) TO PUBLIC;
    END IF;
    PERFORM qvl._secure_triggers();  -- the trigger functions' owner and its rights
    PERFORM qvl._ensure_worker_role();  -- the worker's rights (each vectorizer's: qvl._secure_vectorizer)
    INSERT INTO qvl.config (key, value) VALUES ('public_grant', public_access::text)
    ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value;
END
$$;

-- For installs with --no-public-grant: let one role embed, rerank and search.
CREATE OR REPLACE FUNCTION qvl.grant_query_access(role_name text) RETURNS void LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT qvl._grant_query_access(role_name, true)
$$;


-- The worker's rights. Writing a vector into a table runs its owner's code (triggers, CHECK
-- constraints, index expressions) with the writer's rights: a worker running as a superuser let
-- any owner of a vectorized table become one. So the worker refuses a superuser login and runs as a
-- login granted qvl_worker, a role the install makes: NOLOGIN, no role attributes, allowed what every
-- worker does (read the catalog, report in qvl.worker_status, prune failures) and, per vectorizer,
-- what its rows need (qvl._grant_worker). `GRANT qvl_worker TO <login>` is all an operator does.
CREATE OR REPLACE FUNCTION qvl._ensure_worker_role() RETURNS void LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'qvl_worker') THEN
        BEGIN
            CREATE ROLE qvl_worker NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- an install into another database of the cluster made it just now
        END;
    END IF;
    -- A role of the whole cluster: whatever it was given since, take it back (its members could SET
    -- ROLE to it, and so could a table's code running in the worker's session).
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'qvl_worker'
                  AND (rolsuper OR rolcanlogin OR rolcreatedb OR rolcreaterole OR rolreplication OR rolbypassrls)) THEN
        ALTER ROLE qvl_worker NOSUPERUSER NOLOGIN NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
    END IF;
    GRANT USAGE ON SCHEMA qvl TO qvl_worker;
    GRANT SELECT ON qvl.vectorizer TO qvl_worker;
    GRANT EXECUTE ON FUNCTION qvl._vector_schema() TO qvl_worker;
    IF to_regclass('qvl.worker_status') IS NOT NULL THEN  -- version 6
        GRANT SELECT, INSERT, UPDATE, DELETE ON qvl.worker_status TO qvl_worker;
    END IF;
    IF to_regprocedure('qvl.prune_failed(text, interval)') IS NOT NULL THEN  -- version 9
        GRANT EXECUTE ON FUNCTION qvl.prune_failed(text, interval), qvl._vectorizer(text), qvl._failed_retention()
            TO qvl_worker;
        GRANT SELECT ON qvl.config TO qvl_worker;  -- the retention
    END IF;
    IF to_regprocedure('qvl._record_model(int, text, text)') IS NOT NULL THEN  -- version 11
        GRANT EXECUTE ON FUNCTION qvl._record_model(int, text, text) TO qvl_worker;
    END IF;
    IF to_regclass('qvl.cut_rows') IS NOT NULL THEN  -- version 12: the rows it stored cut
        GRANT SELECT, INSERT, UPDATE, DELETE ON qvl.cut_rows TO qvl_worker;
    END IF;
END
$$;

-- A vectorizer's document columns (version 13; none before).
CREATE OR REPLACE FUNCTION qvl._document_columns(v qvl.vectorizer) RETURNS name[] LANGUAGE sql STABLE
SET search_path = pg_catalog AS $$
    SELECT coalesce(ARRAY(SELECT jsonb_array_elements_text(to_jsonb(v) -> 'document_columns'))::name[], '{}')
$$;

-- The columns of a vectorizer's table that exist now, of those named (one dropped before version 7,
-- when nothing guarded the table, is left out), quoted and comma-separated; NULL when none does.
CREATE OR REPLACE FUNCTION qvl._existing_columns(source regclass, names name[]) RETURNS text LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) FROM pg_attribute a
     WHERE a.attrelid = source AND a.attname = ANY (names) AND a.attnum > 0 AND NOT a.attisdropped
$$;

-- One vectorizer's share of qvl_worker: USAGE of its table's schema, SELECT of its key and input
-- columns (a claim reads them; a write compares their hash), UPDATE of its destination (the vector; a
-- row lock needs UPDATE too), and its queue and failed tables. Nothing else of the table. A chunked
-- vectorizer (version 13) writes no column of the table: its chunks instead (SELECT, INSERT, DELETE:
-- a write replaces a row's chunks).
CREATE OR REPLACE FUNCTION qvl._grant_worker(vid int) RETURNS void LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v qvl.vectorizer;
    reads text;
    writes text;
BEGIN
    PERFORM qvl._ensure_worker_role();
    SELECT * INTO v FROM qvl.vectorizer WHERE id = vid;
    IF FOUND AND EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = v.source) THEN
        reads := qvl._existing_columns(v.source, v.pk_columns || v.text_columns || v.image_columns || v.video_columns
                                                   || qvl._document_columns(v));
        writes := CASE WHEN qvl._chunk_table(v) IS NULL THEN qvl._existing_columns(v.source, ARRAY[v.destination]) END;
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO qvl_worker',
                       (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                         WHERE c.oid = v.source));
        IF reads IS NOT NULL THEN
            EXECUTE format('GRANT SELECT (%s) ON %s TO qvl_worker', reads, v.source);
        END IF;
        IF writes IS NOT NULL THEN
            EXECUTE format('GRANT UPDATE (%s) ON %s TO qvl_worker', writes, v.source);
        END IF;
        IF qvl._chunk_table(v) IS NOT NULL THEN
            EXECUTE format('GRANT USAGE ON SCHEMA %I TO qvl_worker',
                           (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                             WHERE c.oid = qvl._chunk_table(v)));
            EXECUTE format('GRANT SELECT, INSERT, DELETE ON %s TO qvl_worker', qvl._chunk_table(v));
        END IF;
    END IF;
    IF to_regclass(format('qvl.queue_%s', vid)) IS NOT NULL THEN
        EXECUTE format('GRANT SELECT, UPDATE, DELETE ON qvl.queue_%s TO qvl_worker', vid);
    END IF;
    IF to_regclass(format('qvl.failed_%s', vid)) IS NOT NULL THEN
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON qvl.failed_%s TO qvl_worker', vid);
    END IF;
END
$$;

-- A dropped vectorizer's share taken back (its queue and failed tables go with it); columns that
-- another vectorizer of the same table reads or writes stay granted. USAGE of the schema stays: it
-- gives nothing without a right on an object in it, and another table there may need it.
CREATE OR REPLACE FUNCTION qvl._revoke_worker(v qvl.vectorizer) RETURNS void LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cols text := qvl._existing_columns(v.source, v.pk_columns || v.text_columns || v.image_columns
                                                 || v.video_columns || qvl._document_columns(v) || v.destination);
    other int;
BEGIN
    IF cols IS NULL OR NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'qvl_worker') THEN
        RETURN;
    END IF;
    IF qvl._chunk_table(v) IS NOT NULL THEN
        EXECUTE format('REVOKE ALL ON %s FROM qvl_worker', qvl._chunk_table(v));
    END IF;
    EXECUTE format('REVOKE SELECT (%s), UPDATE (%s) ON %s FROM qvl_worker', cols, cols, v.source);
    FOR other IN SELECT x.id FROM qvl.vectorizer x WHERE x.source = v.source AND x.id <> v.id LOOP
        PERFORM qvl._grant_worker(other);
    END LOOP;
END
$$;
