-- qvl 003: who may query. Re-applied by every install; the installer then calls qvl._apply_grants
-- with the install's choice (public_grant, kept in qvl.config).

-- Who may query. Everything in qvl is private, then the query functions are opened to the grantee.
CREATE OR REPLACE FUNCTION qvl._query_functions() RETURNS name[] LANGUAGE sql IMMUTABLE AS $$
    SELECT ARRAY['embed', 'embed_halfvec', 'rerank', 'search', 'wait_for_embeddings', 'service_info',
                 'query_embedding', 'query_embedding_halfvec', 'query_embedding_bit', 'rerank_rows', 'hybrid_search',
                 '_call', '_load', '_queue_stats', '_check_key_type', '_rerank_rows', '_fulltext_document']::name[]
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
    INSERT INTO qvl.config (key, value) VALUES ('public_grant', public_access::text)
    ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value;
END
$$;

-- For installs with --no-public-grant: let one role embed, rerank and search.
CREATE OR REPLACE FUNCTION qvl.grant_query_access(role_name text) RETURNS void LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT qvl._grant_query_access(role_name, true)
$$;
