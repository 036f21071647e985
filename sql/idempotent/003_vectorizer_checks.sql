-- qvl 003: vectorizers, the checks qvl.create_vectorizer (and qvl.reembed) make before anything is
-- created: each raises the error that names what to change.
--
-- Re-applied by every install (sql/idempotent/); one of version 3's four files (their order:
-- 003_vectorizer_objects.sql).

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


-- 'full' or 'managed' (issue 22): which install `qvl pg install` made (connectors/postgres/install_modes.py).
-- The managed one has no PL/Python: nothing here may call the model.
CREATE OR REPLACE FUNCTION qvl._install_kind() RETURNS text LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce((SELECT value FROM qvl.config WHERE key = 'install'), 'full')
$$;


-- What the managed install cannot do, refused when the vectorizer is made rather than on its first row.
CREATE OR REPLACE FUNCTION qvl._check_install_allows(mode text, dimensions int) RETURNS void LANGUAGE plpgsql
STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF qvl._install_kind() <> 'managed' THEN
        RETURN;
    END IF;
    IF mode = 'sync' THEN
        RAISE EXCEPTION 'qvl: mode => ''sync'' embeds inside the INSERT, which needs PL/Python (plpython3u); this '
                        'managed install of qvl has none' USING ERRCODE = '0A000',
            HINT = 'Use mode => ''async'' (the default): `qvl worker` fills the column, and '
                   'qvl.wait_for_embeddings(name) waits for it.';
    END IF;
    IF dimensions IS NULL THEN
        RAISE EXCEPTION 'qvl: dimensions => NULL means the model''s full size, which only the service knows; on '
                        'this managed install the database does not call the service (no PL/Python)'
            USING ERRCODE = '0A000',
            HINT = 'Pass dimensions => N (the embedding model''s hidden_size, or fewer: a Matryoshka prefix). '
                   '`qvl worker` checks the service can give them at its first claim, and holds the vectorizer '
                   'with the reason if not.';
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
