-- qvl 011 (issue 22): search by a query vector the application embedded, in PL/pgSQL, on both installs.
-- The managed install has no PL/Python, so the text-query qvl.search cannot embed; these take the
-- query's vector (connectors.client.Client.embed with the vectorizer's query instruction and size)
-- and return the nearest rows, score NULL: the reranker runs in the application
-- (connectors.postgres.search does both). Runs as its caller, read-only, like qvl.search. A filter
-- is not taken here: add WHERE to your own `ORDER BY embedding <=> $1` query, or pass it to
-- connectors.postgres.search, which checks it as qvl.search does.

CREATE OR REPLACE FUNCTION qvl.search(vectorizer text, query vector, k int DEFAULT 10, "offset" int DEFAULT 0)
RETURNS TABLE(pk text, distance real, score real) LANGUAGE plpgsql VOLATILE SET transaction_read_only = on AS $$
DECLARE
    v record;
    vs text;
    dims int;
    rel text;
    keytext text;
    target text;
    probe text;
BEGIN
    SELECT x.name, x.pk_columns, x.destination, x.dimensions, x.storage, c.relname,
           pg_catalog.format('%I.%I', n.nspname, c.relname) AS source_sql
      INTO v FROM qvl.vectorizer x JOIN pg_catalog.pg_class c ON c.oid = x.source
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE x.name = vectorizer;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'qvl: no vectorizer named %', vectorizer USING ERRCODE = '42704',
            HINT = 'See SELECT name FROM qvl.vectorizer_status;';
    END IF;
    IF k IS NULL THEN
        RAISE EXCEPTION 'qvl: k is NULL' USING ERRCODE = '22004', HINT = 'k => 10 returns the 10 nearest rows.';
    END IF;
    IF "offset" IS NOT NULL AND "offset" < 0 THEN
        RAISE EXCEPTION 'qvl: offset must be 0 or more, got %', "offset" USING ERRCODE = '22023',
            HINT = 'offset => 20 skips the 20 nearest rows.';
    END IF;
    IF query IS NULL OR k < 1 THEN
        RETURN;
    END IF;
    -- pgvector's schema (its operators and functions by name, whatever the caller's search_path).
    SELECT pg_catalog.quote_ident(ns.nspname) INTO vs FROM pg_catalog.pg_extension e
      JOIN pg_catalog.pg_namespace ns ON ns.oid = e.extnamespace WHERE e.extname = 'vector';
    EXECUTE pg_catalog.format('SELECT %s.vector_dims($1)', vs) INTO dims USING query;
    IF dims <> v.dimensions THEN
        RAISE EXCEPTION 'qvl: the query vector has % dimensions, and vectorizer % stores %',
                dims, vectorizer, v.dimensions USING ERRCODE = '22000',
            HINT = pg_catalog.format('Embed the query at dimensions => %s with the vectorizer''s query instruction '
                                     '(connectors.postgres.search does).', v.dimensions);
    END IF;
    rel := pg_catalog.quote_ident(v.relname);
    SELECT CASE WHEN pg_catalog.cardinality(v.pk_columns) = 1
                THEN pg_catalog.format('%s.%I::pg_catalog.text', rel, v.pk_columns[1])
                ELSE pg_catalog.format('ROW(%s)::pg_catalog.text',
                                       pg_catalog.string_agg(pg_catalog.format('%s.%I', rel, c), ', ' ORDER BY o)) END
      INTO keytext FROM pg_catalog.unnest(v.pk_columns) WITH ORDINALITY AS u(c, o);
    target := pg_catalog.format('%s.%I', rel, v.destination);
    -- The column's own type on the query side, so its index serves (pgvector's operators, by schema).
    probe := CASE v.storage
        WHEN 'vector' THEN pg_catalog.format('OPERATOR(%s.<=>) $1', vs)
        WHEN 'halfvec' THEN pg_catalog.format('OPERATOR(%1$s.<=>) $1::%1$s.halfvec(%2$s)', vs, v.dimensions)
        ELSE pg_catalog.format('OPERATOR(%1$s.<~>) %1$s.binary_quantize($1)::pg_catalog.bit(%2$s)', vs, v.dimensions)
    END;
    RETURN QUERY EXECUTE pg_catalog.format(
        'SELECT %1$s, (%2$s %3$s)::pg_catalog.float4, NULL::pg_catalog.float4 FROM %4$s WHERE %2$s IS NOT NULL '
        'ORDER BY %2$s %3$s LIMIT $2 OFFSET $3', keytext, target, probe, v.source_sql)
        USING query, k, coalesce("offset", 0);
END
$$;
COMMENT ON FUNCTION qvl.search(text, vector, int, int) IS
    'The nearest rows to a query vector the application embedded (score NULL: rerank in the application)';
