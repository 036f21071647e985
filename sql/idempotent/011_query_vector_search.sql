-- qvl 011 (issue 22): search by a query vector the application embedded, in PL/pgSQL, on both installs.
-- The managed install has no PL/Python, so the text-query qvl.search cannot embed; these take the
-- query's vector (connectors.client.Client.embed with the vectorizer's query instruction and size)
-- and return the nearest rows, score NULL: the reranker runs in the application
-- (connectors.postgres.search does both). Runs as its caller, read-only, like qvl.search. A filter
-- is not taken here: add WHERE to your own `ORDER BY embedding <=> $1` query, or pass it to
-- connectors.postgres.search, which checks it as qvl.search does.

-- What both query-vector searches (qvl.search here, qvl.search_chunks in 013_chunk_search.sql) check and
-- prepare: k and offset, the vector's size; the distance to the query on the stored type (pgvector's
-- operators by their schema, whatever the caller's search_path, so the column's index serves); and
-- hnsw.ef_search raised for this query (an HNSW scan returns at most that many rows). Returns the probe
-- and the setting to put back once the caller's RETURN QUERY has read every row; probe NULL: nothing to
-- return (no query vector, or k < 1). `unit`: what k counts; `via`: the application-side call.
CREATE OR REPLACE FUNCTION qvl._vector_probe(vectorizer text, query vector, dimensions int, storage text, k int,
                                             "offset" int, unit text, via text, OUT probe text, OUT ef text)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    vs text;
    dims int;
BEGIN
    IF k IS NULL THEN
        RAISE EXCEPTION 'qvl: k is NULL' USING ERRCODE = '22004',
            HINT = pg_catalog.format('k => 10 returns the 10 nearest %s.', unit);
    END IF;
    IF "offset" IS NOT NULL AND "offset" < 0 THEN
        RAISE EXCEPTION 'qvl: offset must be 0 or more, got %', "offset" USING ERRCODE = '22023',
            HINT = pg_catalog.format('offset => 20 skips the 20 nearest %s.', unit);
    END IF;
    IF query IS NULL OR k < 1 THEN
        RETURN;
    END IF;
    SELECT pg_catalog.quote_ident(ns.nspname) INTO vs FROM pg_catalog.pg_extension e
      JOIN pg_catalog.pg_namespace ns ON ns.oid = e.extnamespace WHERE e.extname = 'vector';
    EXECUTE pg_catalog.format('SELECT %s.vector_dims($1)', vs) INTO dims USING query;
    IF dims <> dimensions THEN
        RAISE EXCEPTION 'qvl: the query vector has % dimensions, and vectorizer % stores %',
                dims, vectorizer, dimensions USING ERRCODE = '22000',
            HINT = pg_catalog.format('Embed the query at dimensions => %s with the vectorizer''s query instruction '
                                     '(%s does).', dimensions, via);
    END IF;
    probe := CASE storage
        WHEN 'vector' THEN pg_catalog.format('OPERATOR(%s.<=>) $1', vs)
        WHEN 'halfvec' THEN pg_catalog.format('OPERATOR(%1$s.<=>) $1::%1$s.halfvec(%2$s)', vs, dimensions)
        ELSE pg_catalog.format('OPERATOR(%1$s.<~>) %1$s.binary_quantize($1)::pg_catalog.bit(%2$s)', vs, dimensions)
    END;
    ef := pg_catalog.current_setting('hnsw.ef_search', true);
    PERFORM pg_catalog.set_config('hnsw.ef_search',
                                  least(1000, greatest(40, k + coalesce("offset", 0), coalesce(ef, '0')::int))::text,
                                  true);
END
$$;


CREATE OR REPLACE FUNCTION qvl.search(vectorizer text, query vector, k int DEFAULT 10, "offset" int DEFAULT 0)
RETURNS TABLE(pk text, distance real, score real) LANGUAGE plpgsql VOLATILE SET transaction_read_only = on AS $$
DECLARE
    v record;
    rel text;
    keytext text;
    target text;
    probe text;
    ef text;
BEGIN
    SELECT x.name, x.pk_columns, x.destination, x.dimensions, x.storage, c.relname,
           pg_catalog.format('%I.%I', n.nspname, c.relname) AS source_sql,
           -- a chunked vectorizer's chunk table (version 13; read through to_jsonb: NULL before)
           pg_catalog.to_jsonb(x) OPERATOR(pg_catalog.->>) 'chunk_table' AS chunk_table
      INTO v FROM qvl.vectorizer x JOIN pg_catalog.pg_class c ON c.oid = x.source
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE x.name = vectorizer;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'qvl: no vectorizer named %', vectorizer USING ERRCODE = '42704',
            HINT = 'See SELECT name FROM qvl.vectorizer_status;';
    END IF;
    IF v.chunk_table IS NOT NULL THEN
        RAISE EXCEPTION 'qvl: vectorizer % keeps chunks, not one vector per row', pg_catalog.quote_literal(vectorizer)
            USING ERRCODE = '0A000',
            HINT = pg_catalog.format('Search its chunks: qvl.search_chunks(%L, query_vector, k); or rank its rows by '
                                     'their best part from the application (connectors.postgres.search).', vectorizer);
    END IF;
    SELECT * INTO probe, ef
      FROM qvl._vector_probe(vectorizer, query, v.dimensions, v.storage, k, "offset", 'rows', 'connectors.postgres.search');
    IF probe IS NULL THEN
        RETURN;
    END IF;
    rel := pg_catalog.quote_ident(v.relname);
    SELECT CASE WHEN pg_catalog.cardinality(v.pk_columns) = 1
                THEN pg_catalog.format('%s.%I::pg_catalog.text', rel, v.pk_columns[1])
                ELSE pg_catalog.format('ROW(%s)::pg_catalog.text',
                                       pg_catalog.string_agg(pg_catalog.format('%s.%I', rel, c), ', ' ORDER BY o)) END
      INTO keytext FROM pg_catalog.unnest(v.pk_columns) WITH ORDINALITY AS u(c, o);
    target := pg_catalog.format('%s.%I', rel, v.destination);
    RETURN QUERY EXECUTE pg_catalog.format(
        'SELECT %1$s, (%2$s %3$s)::pg_catalog.float4, NULL::pg_catalog.float4 FROM %4$s WHERE %2$s IS NOT NULL '
        'ORDER BY %2$s %3$s LIMIT $2 OFFSET $3', keytext, target, probe, v.source_sql)
        USING query, k, coalesce("offset", 0);
    PERFORM pg_catalog.set_config('hnsw.ef_search', coalesce(ef, '40'), true);
END
$$;
COMMENT ON FUNCTION qvl.search(text, vector, int, int) IS
    'The nearest rows to a query vector the application embedded (score NULL: rerank in the application)';


-- Hybrid search by the query's text (full text) and its vector (embedded by the application): the
-- vector list (the `candidates` nearest, as above) and the full-text list (the `candidates` best
-- ts_rank_cd matches of the query, websearch syntax) fused by reciprocal rank as qvl.hybrid_search fuses
-- them (weight / (60 + rank), ties by the better rank); score NULL (rerank in the application). Rows
-- offset+1 .. offset+k. No filter here (see above).
CREATE OR REPLACE FUNCTION qvl.hybrid_search(vectorizer text, query text, query_vector vector, k int DEFAULT 10,
                                             weights real[] DEFAULT '{1,1}', candidates int DEFAULT 100,
                                             "offset" int DEFAULT 0)
RETURNS TABLE(pk text, score real, rrf real, vector_rank int, text_rank int) LANGUAGE plpgsql VOLATILE
SET transaction_read_only = on AS $$
DECLARE
    v record;
    document text;
    rel text;
    keytext text;
    keyorder text;
    wanted int;
    limited int;
BEGIN
    SELECT x.id, x.pk_columns, x.fulltext, c.relname, pg_catalog.format('%I.%I', n.nspname, c.relname) AS source_sql,
           pg_catalog.to_jsonb(x) OPERATOR(pg_catalog.->>) 'chunk_table' AS chunk_table  -- version 13, as above
      INTO v FROM qvl.vectorizer x JOIN pg_catalog.pg_class c ON c.oid = x.source
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE x.name = vectorizer;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'qvl: no vectorizer named %', vectorizer USING ERRCODE = '42704',
            HINT = 'See SELECT name FROM qvl.vectorizer_status;';
    END IF;
    -- Refused here, not by the qvl.search below: its words would name qvl.search.
    IF v.chunk_table IS NOT NULL THEN
        RAISE EXCEPTION 'qvl: vectorizer % keeps chunks; hybrid search reads one vector per row',
                pg_catalog.quote_literal(vectorizer) USING ERRCODE = '0A000',
            HINT = pg_catalog.format('qvl.hybrid_search fuses one vector per row with full text, and this vectorizer '
                                     'keeps a vector per chunk: search its chunks with qvl.search_chunks(%L, '
                                     'query_vector, k), or rank its rows by their best part from the application '
                                     '(connectors.postgres.search).', vectorizer);
    END IF;
    IF v.fulltext IS NULL THEN
        RAISE EXCEPTION 'qvl: vectorizer % has no full-text index', pg_catalog.quote_literal(vectorizer)
            USING ERRCODE = '55000', HINT = pg_catalog.format('Give it one: SELECT qvl.set_fulltext(%L, ''english'');',
                                                              vectorizer);
    END IF;
    IF weights IS NULL OR pg_catalog.cardinality(weights) <> 2 OR weights[1] IS NULL OR weights[2] IS NULL
       OR weights[1] < 0 OR weights[2] < 0 OR weights[1] + weights[2] = 0 THEN
        RAISE EXCEPTION 'qvl: weights must be two numbers >= 0, not both 0 (vector, full text), got %', weights
            USING ERRCODE = '22023', HINT = 'weights => ARRAY[1, 1] weighs both alike; ARRAY[1, 0] is vector search alone.';
    END IF;
    IF k IS NULL THEN
        RAISE EXCEPTION 'qvl: k is NULL' USING ERRCODE = '22004', HINT = 'k => 10 returns the 10 best rows.';
    END IF;
    IF query IS NULL OR k < 1 THEN
        RETURN;
    END IF;
    wanted := coalesce("offset", 0) + k;
    limited := greatest(coalesce(candidates, 0), wanted);
    document := qvl._fulltext_document(v.id);
    rel := pg_catalog.quote_ident(v.relname);
    SELECT CASE WHEN pg_catalog.cardinality(v.pk_columns) = 1
                THEN pg_catalog.format('%s.%I::pg_catalog.text', rel, v.pk_columns[1])
                ELSE pg_catalog.format('ROW(%s)::pg_catalog.text',
                                       pg_catalog.string_agg(pg_catalog.format('%s.%I', rel, c), ', ' ORDER BY o)) END,
           pg_catalog.string_agg(pg_catalog.format('%s.%I', rel, c), ', ' ORDER BY o)
      INTO keytext, keyorder FROM pg_catalog.unnest(v.pk_columns) WITH ORDINALITY AS u(c, o);
    RETURN QUERY EXECUTE pg_catalog.format($q$
        WITH tsq AS (SELECT pg_catalog.websearch_to_tsquery(%1$L::pg_catalog.regconfig, $2) AS q),
        vec AS (SELECT s.pk, pg_catalog.row_number() OVER (ORDER BY s.distance, s.pk)::int AS r
                  FROM qvl.search($1, $3, $4) AS s WHERE $5[1] > 0),
        txt AS (SELECT %2$s AS pk, pg_catalog.row_number() OVER (ORDER BY pg_catalog.ts_rank_cd(%3$s, tsq.q) DESC,
                                                                 %4$s)::int AS r
                  FROM %5$s, tsq WHERE $5[2] > 0 AND pg_catalog.numnode(tsq.q) > 0
                   AND %3$s OPERATOR(pg_catalog.@@) tsq.q
                 ORDER BY pg_catalog.ts_rank_cd(%3$s, tsq.q) DESC, %4$s LIMIT $4),
        fused AS (SELECT coalesce(vec.pk, txt.pk) AS pk,
                         (coalesce($5[1]::pg_catalog.float8 / (60 + vec.r), 0)
                          + coalesce($5[2]::pg_catalog.float8 / (60 + txt.r), 0)) AS rrf,
                         vec.r AS vr, txt.r AS tr
                    FROM vec FULL JOIN txt ON vec.pk = txt.pk)
        SELECT fused.pk, NULL::pg_catalog.float4, fused.rrf::pg_catalog.float4, fused.vr, fused.tr FROM fused
         ORDER BY fused.rrf DESC, least(fused.vr, fused.tr) LIMIT $6 OFFSET $7$q$,
        v.fulltext, keytext, document, keyorder, v.source_sql)
        USING vectorizer, query, query_vector, limited, weights, k, coalesce("offset", 0);
END
$$;
COMMENT ON FUNCTION qvl.hybrid_search(text, text, vector, int, real[], int, int) IS
    'Full-text and vector rankings (the query''s vector from the application) fused by reciprocal rank; score NULL';
