-- qvl 008: hybrid search: a full-text index over a vectorizer's text columns, and
-- qvl.hybrid_search, which fuses the full-text ranking and the vector ranking by reciprocal rank,
-- then reranks. Re-applied by every install (sql/idempotent/); the fulltext column of qvl.vectorizer
-- is in sql/incremental/008_hybrid_search.sql.

-- text[] as one text, for to_tsvector. IMMUTABLE (an index expression must be): array_to_string is
-- only STABLE because some element types print by settings (timestamptz, ...); text does not.
-- Whoever writes the table runs it (qvl._apply_grants grants it to PUBLIC).
CREATE OR REPLACE FUNCTION qvl._fulltext_join(parts text[]) RETURNS text LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT array_to_string(parts, ' ')
$$;


-- The document of a vectorizer's rows: to_tsvector of its text columns, joined by spaces. One
-- expression for the index and for the queries, every name qualified, so a query's match is the
-- index's whatever the caller's search_path (and the index answers it). NULL without fulltext.
CREATE OR REPLACE FUNCTION qvl._fulltext_document(vid int) RETURNS text LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT format('pg_catalog.to_tsvector(%L::pg_catalog.regconfig, %s)', v.fulltext,
                  string_agg(CASE WHEN t.typcategory = 'A'
                                  THEN format('COALESCE(qvl._fulltext_join(%I::pg_catalog.text[]), '''')', u.c)
                                  ELSE format('COALESCE(%I::pg_catalog.text, '''')', u.c) END,
                             ' OPERATOR(pg_catalog.||) '' '' OPERATOR(pg_catalog.||) ' ORDER BY u.o))
      FROM qvl.vectorizer v
      CROSS JOIN LATERAL unnest(v.text_columns) WITH ORDINALITY AS u(c, o)
      JOIN pg_attribute a ON a.attrelid = v.source AND a.attname = u.c
      JOIN pg_type t ON t.oid = a.atttypid
     WHERE v.id = vid AND v.fulltext IS NOT NULL
     GROUP BY v.fulltext
$$;


-- The full-text index's name: beside the vector index (<table>_<destination>_hnsw), in the table's schema.
CREATE OR REPLACE FUNCTION qvl._fulltext_index(vid int, OUT schema_name name, OUT index_name name) LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT n.nspname, left(c.relname || '_' || v.destination || '_fulltext', 63)::name
      FROM qvl.vectorizer v JOIN pg_class c ON c.oid = v.source JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE v.id = vid
$$;


-- Give a vectorizer a full-text index in a text search configuration ('english', 'simple', ...),
-- replace it, or drop it (NULL). The index is built in this statement (CREATE INDEX: writes to the
-- table wait for it); installing role only, like create_vectorizer.
CREATE OR REPLACE FUNCTION qvl.set_fulltext(name text, fulltext text) RETURNS void LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    v qvl.vectorizer := qvl._vectorizer(name);
    config text;
    idx record;
BEGIN
    SELECT * INTO idx FROM qvl._fulltext_index(v.id);
    IF fulltext IS NOT NULL THEN
        IF cardinality(v.text_columns) = 0 THEN
            RAISE EXCEPTION 'qvl: vectorizer % has no text columns to index for full-text search', v.name
                USING ERRCODE = '22023', HINT = 'Full-text search reads the vectorizer''s text_columns.';
        END IF;
        BEGIN
            SELECT format('%I.%I', n.nspname, c.cfgname) INTO config
              FROM pg_ts_config c JOIN pg_namespace n ON n.oid = c.cfgnamespace
             WHERE c.oid = fulltext::regconfig;
        EXCEPTION WHEN undefined_object OR invalid_name OR syntax_error THEN
            RAISE EXCEPTION 'qvl: no text search configuration named %', fulltext USING ERRCODE = '42704',
                HINT = 'SELECT cfgname FROM pg_ts_config; lists them (english, simple, ...); one outside '
                       'pg_catalog is named with its schema.';
        END;
    END IF;
    IF v.fulltext IS NOT NULL THEN
        EXECUTE format('DROP INDEX IF EXISTS %I.%I', idx.schema_name, idx.index_name);
    END IF;
    UPDATE qvl.vectorizer SET fulltext = config WHERE id = v.id;
    IF config IS NOT NULL THEN
        EXECUTE format('CREATE INDEX %I ON %s USING gin ((%s))', idx.index_name, v.source,
                       qvl._fulltext_document(v.id));
    END IF;
END
$$;
COMMENT ON FUNCTION qvl.set_fulltext(text, text) IS
    'Give a vectorizer a full-text index (a text search configuration, e.g. english) for qvl.hybrid_search; NULL drops it';


-- Hybrid search: the `candidates` nearest rows and the `candidates` best full-text matches
-- (websearch_to_tsquery: words, "quoted phrases", or, -word), both among the rows that pass
-- `filter`; fused by reciprocal rank (weights: vector, full text; each list adds weight / (60 + rank));
-- then the reranker over the fused best `candidates`. Rows offset+1 .. offset+k, best first: by score,
-- or by rrf when rerank => false (score NULL). vector_rank and text_rank: the row's place in each list
-- (NULL: not in it). Runs as the caller and read-only, as qvl.search does; filter: SQL text, or a
-- structured jsonb filter (the overloads below).
CREATE OR REPLACE FUNCTION qvl.hybrid_search(vectorizer text, query text, k int DEFAULT 10, filter text DEFAULT NULL,
                                             weights real[] DEFAULT '{1,1}', rerank boolean DEFAULT true,
                                             candidates int DEFAULT 100, "offset" int DEFAULT 0)
RETURNS TABLE(pk text, score real, rrf real, vector_rank int, text_rank int) LANGUAGE plpython3u VOLATILE
SET transaction_read_only = on AS $py$
# qvl:prologue
return lib.hybrid_rows(vectorizer, query, k, filter, weights, rerank, candidates, offset)
$py$;
COMMENT ON FUNCTION qvl.hybrid_search(text, text, int, text, real[], boolean, int, int) IS
    'Full-text and vector rankings fused by reciprocal rank, then reranked; the key as text';

-- The same with the key in the table's own type (key_type => NULL::bigint), as qvl.search has.
CREATE OR REPLACE FUNCTION qvl.hybrid_search(vectorizer text, query text, key_type anyelement, k int DEFAULT 10,
                                             filter text DEFAULT NULL, weights real[] DEFAULT '{1,1}',
                                             rerank boolean DEFAULT true, candidates int DEFAULT 100,
                                             "offset" int DEFAULT 0)
RETURNS TABLE(key anyelement, score real, rrf real, vector_rank int, text_rank int) LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN QUERY EXECUTE pg_catalog.format(
        'SELECT h.pk::%s, h.score, h.rrf, h.vector_rank, h.text_rank '
        'FROM qvl.hybrid_search($1, $2, $3, $4, $5, $6, $7, $8) AS h',
        qvl._check_key_type(vectorizer, pg_catalog.pg_typeof(key_type)::pg_catalog.regtype))
        USING vectorizer, query, k, filter, weights, rerank, candidates, "offset";
END
$$;
COMMENT ON FUNCTION qvl.hybrid_search(text, text, anyelement, int, text, real[], boolean, int, int) IS
    'Hybrid search with the key in the table''s type (key_type => NULL::bigint)';


-- Under a structured (jsonb) filter, as qvl.search has: filter third, without a default.
CREATE OR REPLACE FUNCTION qvl.hybrid_search(vectorizer text, query text, filter jsonb, k int DEFAULT 10,
                                             weights real[] DEFAULT '{1,1}', rerank boolean DEFAULT true,
                                             candidates int DEFAULT 100, "offset" int DEFAULT 0)
RETURNS TABLE(pk text, score real, rrf real, vector_rank int, text_rank int) LANGUAGE plpython3u VOLATILE
SET transaction_read_only = on AS $py$
# qvl:prologue
return lib.hybrid_rows(vectorizer, query, k, lib.structured(filter), weights, rerank, candidates, offset)
$py$;
COMMENT ON FUNCTION qvl.hybrid_search(text, text, jsonb, int, real[], boolean, int, int) IS
    'Hybrid search under a structured (jsonb) filter; the key as text';

CREATE OR REPLACE FUNCTION qvl.hybrid_search(vectorizer text, query text, key_type anyelement, filter jsonb,
                                             k int DEFAULT 10, weights real[] DEFAULT '{1,1}',
                                             rerank boolean DEFAULT true, candidates int DEFAULT 100,
                                             "offset" int DEFAULT 0)
RETURNS TABLE(key anyelement, score real, rrf real, vector_rank int, text_rank int) LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN QUERY EXECUTE pg_catalog.format(
        'SELECT h.pk::%s, h.score, h.rrf, h.vector_rank, h.text_rank '
        'FROM qvl.hybrid_search($1, $2, $3, $4, $5, $6, $7, $8) AS h',
        qvl._check_key_type(vectorizer, pg_catalog.pg_typeof(key_type)::pg_catalog.regtype))
        USING vectorizer, query, filter, k, weights, rerank, candidates, "offset";
END
$$;
COMMENT ON FUNCTION qvl.hybrid_search(text, text, anyelement, jsonb, int, real[], boolean, int, int) IS
    'Hybrid search under a structured (jsonb) filter, the key in the table''s type (key_type => NULL::bigint)';
