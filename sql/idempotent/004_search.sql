-- qvl 004: search in SQL, as pieces and in one call. Re-applied by every install (sql/idempotent/).
--
-- qvl.query_embedding(vectorizer, query [, video]): the query's vector as the vectorizer makes
--   them (its dimensions, its query instruction), for `ORDER BY embedding <=> qvl.query_embedding(...)`
--   under any WHERE. STABLE, so an index scan may use it; remembered for the statement, so the
--   service is asked once per statement, not once per row.
-- qvl.rerank_rows(vectorizer, query, keys): the reranker over the rows with those keys (their own
--   text, images and video), keys in the table's key type: over the result of any query.
-- qvl.search(vectorizer, query, k, candidates, rerank, filter, offset): the nearest `candidates`
--   rows that pass the filter, reranked; the key as text, or typed with key_type => NULL::bigint.
--
-- Every function here runs as its caller (SECURITY INVOKER, no SET search_path): the caller's
-- privileges, row-level security and search_path apply to the table read and to the filter. The
-- SQL they build names qvl's and pgvector's objects by schema; only qvl._call (the service door)
-- is SECURITY DEFINER. The functions that take a filter run read-only (SET transaction_read_only =
-- on: PostgreSQL refuses every write until they return, then the caller's transaction is as it was),
-- so not even a function the filter calls can write.

-- Until filter and offset came, qvl.search had five parameters; those signatures would make calls
-- that leave the new parameters out ambiguous.
-- (Only where they exist: DROP ... IF EXISTS would NOTICE "does not exist, skipping".)
DO $$ BEGIN
    IF to_regprocedure('qvl.search(text, text, int, int, boolean)') IS NOT NULL THEN
        DROP FUNCTION qvl.search(text, text, int, int, boolean);
    END IF;
    IF to_regprocedure('qvl.search(text, bytea, int, int, boolean)') IS NOT NULL THEN
        DROP FUNCTION qvl.search(text, bytea, int, int, boolean);
    END IF;
END $$;


-- The query's vector. query_embedding returns vector, which serves vector and halfvec columns
-- alike (pgvector casts vector to halfvec implicitly: the argument is cast, the column keeps its
-- index); _halfvec skips that cast; _bit serves bit columns and binary_quantize(...) indexes.
CREATE OR REPLACE FUNCTION qvl.query_embedding(vectorizer text, query text, video bytea DEFAULT NULL)
RETURNS vector LANGUAGE plpython3u STABLE AS $py$
# qvl:prologue
return lib.query_embedding_sql(vectorizer, query, None, video, "vector")
$py$;
CREATE OR REPLACE FUNCTION qvl.query_embedding(vectorizer text, query bytea, video bytea DEFAULT NULL)
RETURNS vector LANGUAGE plpython3u STABLE AS $py$
# qvl:prologue
return lib.query_embedding_sql(vectorizer, None, query, video, "vector")
$py$;
COMMENT ON FUNCTION qvl.query_embedding(text, text, bytea) IS
    'The query''s vector as the vectorizer makes them (its size, its query instruction); once per statement';
COMMENT ON FUNCTION qvl.query_embedding(text, bytea, bytea) IS
    'An image query''s vector as the vectorizer makes them; once per statement';

CREATE OR REPLACE FUNCTION qvl.query_embedding_halfvec(vectorizer text, query text, video bytea DEFAULT NULL)
RETURNS halfvec LANGUAGE plpython3u STABLE AS $py$
# qvl:prologue
return lib.query_embedding_sql(vectorizer, query, None, video, "halfvec")
$py$;
CREATE OR REPLACE FUNCTION qvl.query_embedding_halfvec(vectorizer text, query bytea, video bytea DEFAULT NULL)
RETURNS halfvec LANGUAGE plpython3u STABLE AS $py$
# qvl:prologue
return lib.query_embedding_sql(vectorizer, None, query, video, "halfvec")
$py$;

CREATE OR REPLACE FUNCTION qvl.query_embedding_bit(vectorizer text, query text, video bytea DEFAULT NULL)
RETURNS bit LANGUAGE plpython3u STABLE AS $py$
# qvl:prologue
return lib.query_embedding_sql(vectorizer, query, None, video, "bit")
$py$;
CREATE OR REPLACE FUNCTION qvl.query_embedding_bit(vectorizer text, query bytea, video bytea DEFAULT NULL)
RETURNS bit LANGUAGE plpython3u STABLE AS $py$
# qvl:prologue
return lib.query_embedding_sql(vectorizer, None, query, video, "bit")
$py$;


-- Keys in the table's own type: key_type (search) or the keys' element type (rerank_rows) must be
-- the key column's type, or for a composite key a composite type of the key's column types in key
-- order (CREATE TYPE docs_key AS (tenant int, id uuid)). Returns it.
CREATE OR REPLACE FUNCTION qvl._check_key_type(vectorizer text, key_type regtype) RETURNS regtype
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v record;
    fields regtype[];
    wanted text;
BEGIN
    SELECT x.source, x.pk_columns, x.pk_types INTO v FROM qvl.vectorizer x WHERE x.name = vectorizer;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'qvl: no vectorizer named %', vectorizer USING ERRCODE = '42704',
            HINT = 'See SELECT name FROM qvl.vectorizer_status;';
    END IF;
    IF cardinality(v.pk_columns) = 1 THEN
        IF key_type IS DISTINCT FROM v.pk_types[1]::regtype THEN
            RAISE EXCEPTION 'qvl: the key of % is %, not %', v.source, v.pk_types[1]::regtype, key_type
                USING ERRCODE = '42804',
                HINT = format('Pass keys of that type: key_type => NULL::%1$s, or ARRAY[...]::%1$s[] for '
                              'rerank_rows.', v.pk_types[1]::regtype);
        END IF;
        RETURN key_type;
    END IF;
    SELECT array_agg(a.atttypid::regtype ORDER BY a.attnum) INTO fields
      FROM pg_type t JOIN pg_attribute a ON a.attrelid = t.typrelid
     WHERE t.oid = key_type AND a.attnum > 0 AND NOT a.attisdropped;
    IF fields IS DISTINCT FROM (SELECT array_agg(t::regtype ORDER BY o) FROM unnest(v.pk_types) WITH ORDINALITY
                                                                              AS u(t, o)) THEN
        SELECT string_agg(format('%I %s', c, t::regtype), ', ' ORDER BY o) INTO wanted
          FROM unnest(v.pk_columns, v.pk_types) WITH ORDINALITY AS u(c, t, o);
        RAISE EXCEPTION 'qvl: the key of % is (%), which % is not', v.source, wanted, key_type
            USING ERRCODE = '42804',
            HINT = format('A composite key comes as a composite type of those columns, in that order: '
                          'CREATE TYPE %s AS (%s); then key_type => NULL::%1$s.',
                          quote_ident((SELECT relname FROM pg_class WHERE oid = v.source) || '_key'), wanted);
    END IF;
    RETURN key_type;
END
$$;


-- Rerank given rows: (key, score) best first, for the keys whose rows the caller can read (each row
-- once); the reranker scores each row's own columns against the query. keys: the table's key type
-- (qvl._check_key_type), e.g. ARRAY(SELECT id FROM photos WHERE ...).
CREATE OR REPLACE FUNCTION qvl._rerank_rows(vectorizer text, query text, image bytea, keys text[],
                                            key_type regtype, top_k int)
RETURNS TABLE(ordinal int, score real) LANGUAGE plpython3u VOLATILE AS $py$
# qvl:prologue
item = lib.text_item(query) if image is None else lib.image_item(image)
return lib.rerank_rows_sql(vectorizer, item, keys, key_type, top_k)
$py$;

-- PL/pgSQL, not SQL: qvl._bare_errors gives it the handler that keeps the traceback of qvl._rerank_rows out
-- of its errors (a SQL function would pass it on).
CREATE OR REPLACE FUNCTION qvl.rerank_rows(vectorizer text, query text, keys anyarray, top_k int DEFAULT NULL)
RETURNS TABLE(key anyelement, score real) LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN QUERY
    SELECT keys[pg_catalog.array_lower(keys, 1) + r.ordinal - 1], r.score
      FROM qvl._rerank_rows(vectorizer, query, NULL, keys::pg_catalog.text[],
                            pg_catalog.pg_typeof(keys[pg_catalog.array_lower(keys, 1)])::pg_catalog.regtype,
                            top_k) AS r;
END
$$;
CREATE OR REPLACE FUNCTION qvl.rerank_rows(vectorizer text, query bytea, keys anyarray, top_k int DEFAULT NULL)
RETURNS TABLE(key anyelement, score real) LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN QUERY
    SELECT keys[pg_catalog.array_lower(keys, 1) + r.ordinal - 1], r.score
      FROM qvl._rerank_rows(vectorizer, NULL, query, keys::pg_catalog.text[],
                            pg_catalog.pg_typeof(keys[pg_catalog.array_lower(keys, 1)])::pg_catalog.regtype,
                            top_k) AS r;
END
$$;
COMMENT ON FUNCTION qvl.rerank_rows(text, text, anyarray, int) IS
    'Rerank the rows with these keys by their own text/images/video: (key, score) best first';
COMMENT ON FUNCTION qvl.rerank_rows(text, bytea, anyarray, int) IS
    'Rerank the rows with these keys against an image: (key, score) best first';


-- Two-stage search: the query embedded with the query instruction; the `candidates` nearest rows
-- that pass `filter` (one condition on the table's columns as SQL text, or a structured jsonb filter;
-- run with the caller's rights: see docs/postgres.md) from the vector index (an iterative scan, or
-- every passing row when few pass); the reranker over each candidate's own columns. Rows offset+1 ..
-- offset+k, best first: by score, or by distance when rerank => false (score NULL). pk: the key as
-- text (ROW(...)::text when composite).
CREATE OR REPLACE FUNCTION qvl.search(vectorizer text, query text, k int DEFAULT 10, candidates int DEFAULT 100,
                                      rerank boolean DEFAULT true, filter text DEFAULT NULL,
                                      "offset" int DEFAULT 0)
RETURNS TABLE(pk text, distance real, score real) LANGUAGE plpython3u VOLATILE SET transaction_read_only = on AS $py$
# qvl:prologue
return lib.search_rows(vectorizer, lib.text_item(query), k, candidates, rerank, filter, offset)
$py$;
COMMENT ON FUNCTION qvl.search(text, text, int, int, boolean, text, int) IS
    'Text query: filtered ANN recall, then rerank; the key as text';

CREATE OR REPLACE FUNCTION qvl.search(vectorizer text, query bytea, k int DEFAULT 10, candidates int DEFAULT 100,
                                      rerank boolean DEFAULT true, filter text DEFAULT NULL,
                                      "offset" int DEFAULT 0)
RETURNS TABLE(pk text, distance real, score real) LANGUAGE plpython3u VOLATILE SET transaction_read_only = on AS $py$
# qvl:prologue
return lib.search_rows(vectorizer, lib.image_item(query), k, candidates, rerank, filter, offset)
$py$;
COMMENT ON FUNCTION qvl.search(text, bytea, int, int, boolean, text, int) IS
    'Image query: filtered ANN recall, then rerank; the key as text';

-- The same with the key in the table's own type: key_type => NULL::bigint (or the composite type of
-- a composite key); join back with ON t.id = s.key.
CREATE OR REPLACE FUNCTION qvl.search(vectorizer text, query text, key_type anyelement, k int DEFAULT 10,
                                      candidates int DEFAULT 100, rerank boolean DEFAULT true,
                                      filter text DEFAULT NULL, "offset" int DEFAULT 0)
RETURNS TABLE(key anyelement, distance real, score real) LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN QUERY EXECUTE pg_catalog.format(
        'SELECT s.pk::%s, s.distance, s.score FROM qvl.search($1, $2, $3, $4, $5, $6, $7) AS s',
        qvl._check_key_type(vectorizer, pg_catalog.pg_typeof(key_type)::pg_catalog.regtype))
        USING vectorizer, query, k, candidates, rerank, filter, "offset";
END
$$;
COMMENT ON FUNCTION qvl.search(text, text, anyelement, int, int, boolean, text, int) IS
    'Text query: filtered ANN recall, then rerank; the key in the table''s type (key_type => NULL::bigint)';

CREATE OR REPLACE FUNCTION qvl.search(vectorizer text, query bytea, key_type anyelement, k int DEFAULT 10,
                                      candidates int DEFAULT 100, rerank boolean DEFAULT true,
                                      filter text DEFAULT NULL, "offset" int DEFAULT 0)
RETURNS TABLE(key anyelement, distance real, score real) LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN QUERY EXECUTE pg_catalog.format(
        'SELECT s.pk::%s, s.distance, s.score FROM qvl.search($1, $2, $3, $4, $5, $6, $7) AS s',
        qvl._check_key_type(vectorizer, pg_catalog.pg_typeof(key_type)::pg_catalog.regtype))
        USING vectorizer, query, k, candidates, rerank, filter, "offset";
END
$$;
COMMENT ON FUNCTION qvl.search(text, bytea, anyelement, int, int, boolean, text, int) IS
    'Image query: filtered ANN recall, then rerank; the key in the table''s type';


-- The structured filter: filter => '{"column": "shop", "op": "=", "value": 7}'::jsonb, or and/or/not
-- of such items (docs/postgres.md). Its values are bound as parameters, cast to their columns' types:
-- the filter to build from an application's user input. filter comes third and has no default, so a
-- call without a filter (or with a text one) names the functions above, never these.
CREATE OR REPLACE FUNCTION qvl.search(vectorizer text, query text, filter jsonb, k int DEFAULT 10,
                                      candidates int DEFAULT 100, rerank boolean DEFAULT true,
                                      "offset" int DEFAULT 0)
RETURNS TABLE(pk text, distance real, score real) LANGUAGE plpython3u VOLATILE SET transaction_read_only = on AS $py$
# qvl:prologue
return lib.search_rows(vectorizer, lib.text_item(query), k, candidates, rerank, lib.structured(filter), offset)
$py$;
COMMENT ON FUNCTION qvl.search(text, text, jsonb, int, int, boolean, int) IS
    'Text query under a structured (jsonb) filter: filtered ANN recall, then rerank; the key as text';

CREATE OR REPLACE FUNCTION qvl.search(vectorizer text, query bytea, filter jsonb, k int DEFAULT 10,
                                      candidates int DEFAULT 100, rerank boolean DEFAULT true,
                                      "offset" int DEFAULT 0)
RETURNS TABLE(pk text, distance real, score real) LANGUAGE plpython3u VOLATILE SET transaction_read_only = on AS $py$
# qvl:prologue
return lib.search_rows(vectorizer, lib.image_item(query), k, candidates, rerank, lib.structured(filter), offset)
$py$;
COMMENT ON FUNCTION qvl.search(text, bytea, jsonb, int, int, boolean, int) IS
    'Image query under a structured (jsonb) filter: filtered ANN recall, then rerank; the key as text';

CREATE OR REPLACE FUNCTION qvl.search(vectorizer text, query text, key_type anyelement, filter jsonb,
                                      k int DEFAULT 10, candidates int DEFAULT 100, rerank boolean DEFAULT true,
                                      "offset" int DEFAULT 0)
RETURNS TABLE(key anyelement, distance real, score real) LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN QUERY EXECUTE pg_catalog.format(
        'SELECT s.pk::%s, s.distance, s.score FROM qvl.search($1, $2, $3, $4, $5, $6, $7) AS s',
        qvl._check_key_type(vectorizer, pg_catalog.pg_typeof(key_type)::pg_catalog.regtype))
        USING vectorizer, query, filter, k, candidates, rerank, "offset";
END
$$;
COMMENT ON FUNCTION qvl.search(text, text, anyelement, jsonb, int, int, boolean, int) IS
    'Text query under a structured (jsonb) filter; the key in the table''s type (key_type => NULL::bigint)';

CREATE OR REPLACE FUNCTION qvl.search(vectorizer text, query bytea, key_type anyelement, filter jsonb,
                                      k int DEFAULT 10, candidates int DEFAULT 100, rerank boolean DEFAULT true,
                                      "offset" int DEFAULT 0)
RETURNS TABLE(key anyelement, distance real, score real) LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN QUERY EXECUTE pg_catalog.format(
        'SELECT s.pk::%s, s.distance, s.score FROM qvl.search($1, $2, $3, $4, $5, $6, $7) AS s',
        qvl._check_key_type(vectorizer, pg_catalog.pg_typeof(key_type)::pg_catalog.regtype))
        USING vectorizer, query, filter, k, candidates, rerank, "offset";
END
$$;
COMMENT ON FUNCTION qvl.search(text, bytea, anyelement, jsonb, int, int, boolean, int) IS
    'Image query under a structured (jsonb) filter; the key in the table''s type';
