-- qvl 013: search over a chunked vectorizer's chunks (issue 21 item 5): PL/Python, kept apart from the
-- plain SQL of sql/idempotent/013_chunking.sql. Re-applied by every install once the schema is at version 13.
--
-- qvl.search_chunks(vectorizer, query, k, candidates, filter, rerank) -> (pk, chunk_seq, locator, distance,
--   score): the `candidates` nearest chunks of the rows that pass the filter, then the reranker over each
--   candidate's part (the page of the row's document, the span of its video, the passage of its text,
--   with the row's other input columns as the chunk was embedded); best first, k of them. Without
--   rerank: nearest first, score NULL. qvl.search on a chunked vectorizer ranks rows by their best part
--   (connectors/postgres/plpy/chunk_search.py).
--
-- As qvl.search (sql/idempotent/004_search.sql): run as the caller (their rights and row-level security
-- on the table and on the chunk table), read-only; the filter is one condition on the table's columns.

CREATE OR REPLACE FUNCTION qvl.search_chunks(vectorizer text, query text, k int DEFAULT 10, candidates int DEFAULT 100,
                                             filter text DEFAULT NULL, rerank boolean DEFAULT true)
RETURNS TABLE(pk text, chunk_seq int, locator jsonb, distance real, score real) LANGUAGE plpython3u VOLATILE
SET transaction_read_only = on AS $py$
# qvl:prologue
return lib.search_chunks_rows(vectorizer, lib.text_item(query), k, candidates, rerank, filter)
$py$;
COMMENT ON FUNCTION qvl.search_chunks(text, text, int, int, text, boolean) IS
    'Text query over a chunked vectorizer: the nearest chunks (pages, clips, passages), reranked by their parts';

CREATE OR REPLACE FUNCTION qvl.search_chunks(vectorizer text, query bytea, k int DEFAULT 10, candidates int DEFAULT 100,
                                             filter text DEFAULT NULL, rerank boolean DEFAULT true)
RETURNS TABLE(pk text, chunk_seq int, locator jsonb, distance real, score real) LANGUAGE plpython3u VOLATILE
SET transaction_read_only = on AS $py$
# qvl:prologue
return lib.search_chunks_rows(vectorizer, lib.image_item(query), k, candidates, rerank, filter)
$py$;
COMMENT ON FUNCTION qvl.search_chunks(text, bytea, int, int, text, boolean) IS
    'Image query over a chunked vectorizer: the nearest chunks, reranked by their parts';

-- The structured (jsonb) filter, third and without a default (as qvl.search's): a call without a
-- filter, or with a text one, names the functions above.
CREATE OR REPLACE FUNCTION qvl.search_chunks(vectorizer text, query text, filter jsonb, k int DEFAULT 10,
                                             candidates int DEFAULT 100, rerank boolean DEFAULT true)
RETURNS TABLE(pk text, chunk_seq int, locator jsonb, distance real, score real) LANGUAGE plpython3u VOLATILE
SET transaction_read_only = on AS $py$
# qvl:prologue
return lib.search_chunks_rows(vectorizer, lib.text_item(query), k, candidates, rerank, lib.structured(filter))
$py$;
COMMENT ON FUNCTION qvl.search_chunks(text, text, jsonb, int, int, boolean) IS
    'Text query over a chunked vectorizer under a structured (jsonb) filter';

-- By a query vector the application embedded (issue 22), in PL/pgSQL, so on both installs (the managed
-- one has no PL/Python): the `k` nearest chunks after `offset`, nearest first, score NULL (the reranker
-- runs in the application: connectors.postgres.search_chunks). As the caller, read-only; the chunks are
-- joined to their rows, so the caller's rights and row-level security on the table apply as above.
CREATE OR REPLACE FUNCTION qvl.search_chunks(vectorizer text, query_vector vector, k int DEFAULT 10,
                                             "offset" int DEFAULT 0)
RETURNS TABLE(pk text, chunk_seq int, locator jsonb, distance real, score real) LANGUAGE plpgsql VOLATILE
SET transaction_read_only = on AS $$
DECLARE
    v record;
    rel text;
    keytext text;
    joined text;
    probe text;
    ef text;
BEGIN
    SELECT x.name, x.pk_columns, x.dimensions, x.storage, x.chunk_table, c.relname,
           pg_catalog.format('%I.%I', n.nspname, c.relname) AS source_sql,
           (SELECT pg_catalog.format('%I.%I', cn.nspname, cc.relname) FROM pg_catalog.pg_class cc
              JOIN pg_catalog.pg_namespace cn ON cn.oid = cc.relnamespace WHERE cc.oid = x.chunk_table) AS chunk_sql
      INTO v FROM qvl.vectorizer x JOIN pg_catalog.pg_class c ON c.oid = x.source
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE x.name = vectorizer;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'qvl: no vectorizer named %', vectorizer USING ERRCODE = '42704',
            HINT = 'See SELECT name FROM qvl.vectorizer_status;';
    END IF;
    IF v.chunk_table IS NULL THEN
        RAISE EXCEPTION 'qvl: vectorizer % keeps one vector per row, not chunks', pg_catalog.quote_literal(vectorizer)
            USING ERRCODE = '22023', HINT = pg_catalog.format('Search it with qvl.search(%L, query_vector).', vectorizer);
    END IF;
    IF v.chunk_sql IS NULL THEN
        RAISE EXCEPTION 'qvl: the chunk table of vectorizer % is gone', pg_catalog.quote_literal(vectorizer)
            USING ERRCODE = '42P01',
            HINT = pg_catalog.format('Drop the vectorizer (SELECT qvl.drop_vectorizer(%L)) and create it again.',
                                     vectorizer);
    END IF;
    SELECT * INTO probe, ef FROM qvl._vector_probe(vectorizer, query_vector, v.dimensions, v.storage, k, "offset",
                                                   'chunks', 'connectors.postgres.search_chunks');
    IF probe IS NULL THEN
        RETURN;
    END IF;
    rel := pg_catalog.quote_ident(v.relname);
    SELECT CASE WHEN pg_catalog.cardinality(v.pk_columns) = 1
                THEN pg_catalog.format('%s.%I::pg_catalog.text', rel, v.pk_columns[1])
                ELSE pg_catalog.format('ROW(%s)::pg_catalog.text',
                                       pg_catalog.string_agg(pg_catalog.format('%s.%I', rel, c), ', ' ORDER BY o)) END,
           pg_catalog.string_agg(pg_catalog.format('%s.%I = qvl_c.%I', rel, c, c), ' AND ' ORDER BY o)
      INTO keytext, joined FROM pg_catalog.unnest(v.pk_columns) WITH ORDINALITY AS u(c, o);
    RETURN QUERY EXECUTE pg_catalog.format(
        'SELECT %1$s, qvl_c.chunk_seq::pg_catalog.int4, qvl_c.locator::pg_catalog.jsonb, '
        '(qvl_c.embedding %2$s)::pg_catalog.float4, NULL::pg_catalog.float4 '
        'FROM %3$s AS qvl_c JOIN %4$s ON %5$s WHERE qvl_c.embedding IS NOT NULL '
        'ORDER BY qvl_c.embedding %2$s LIMIT $2 OFFSET $3', keytext, probe, v.chunk_sql, v.source_sql, joined)
        USING query_vector, k, coalesce("offset", 0);
    PERFORM pg_catalog.set_config('hnsw.ef_search', coalesce(ef, '40'), true);
END
$$;
COMMENT ON FUNCTION qvl.search_chunks(text, vector, int, int) IS
    'The nearest chunks to a query vector the application embedded (score NULL: rerank in the application)';
