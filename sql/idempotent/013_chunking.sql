-- qvl 013: chunked vectorizers (issue 21 item 5), their configuration functions and their creation.
-- Re-applied by every install once the schema is at version 13 (the columns: sql/incremental/013_*).
--
-- A chunked vectorizer asks the service to split each row's item (EmbedOptions.chunking: the pages of
-- a PDF, windows of a video, passages of a text; docs/documents.md) and keeps one row per chunk in a
-- destination table of its own:
--   <schema of the source>.<destination>       the source's key columns, chunk_seq (0-based), locator
--                                               jsonb, embedding; primary key (key..., chunk_seq); an
--                                               HNSW index; owned by the source's owner
--   <schema of the source>.<destination>_view  the chunks joined to their rows (security_invoker: read
--                                               with the reader's rights, row-level security included)
-- The worker replaces a row's chunks in one transaction (connectors/postgres/vectorizers.py); the
-- queueing trigger function deletes them with their row (sql/idempotent/003_vectorizer_objects.sql).
-- No PL/Python here: plain SQL and plpgsql.


-- The configurations, as pgai's ai.chunking_*(): jsonb that qvl.create_vectorizer(chunking => ...) takes and
-- the worker sends as EmbedOptions.chunking.

-- Every page of the row's document; max_pages: refuse (fail the row) a document with more pages
-- (the service checks it on opening, before drawing any; NULL: the service's QVL_MAX_DOCUMENT_PAGES).
CREATE OR REPLACE FUNCTION qvl.chunk_pages(max_pages int DEFAULT NULL) RETURNS jsonb LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF max_pages IS NOT NULL AND max_pages < 1 THEN
        RAISE EXCEPTION 'qvl: chunk_pages: max_pages must be at least 1, got %', max_pages USING ERRCODE = '22023',
            HINT = 'Pass max_pages => N (N >= 1), or leave it out for the service''s QVL_MAX_DOCUMENT_PAGES.';
    END IF;
    RETURN jsonb_strip_nulls(jsonb_build_object('type', 'pages', 'max_pages', max_pages));
END
$$;

-- Windows of `seconds` of the row's video, starting `seconds - overlap` apart.
CREATE OR REPLACE FUNCTION qvl.chunk_video(seconds float8 DEFAULT 10, overlap float8 DEFAULT 0) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF seconds IS NULL OR NOT seconds > 0 OR seconds = 'infinity' THEN
        RAISE EXCEPTION 'qvl: chunk_video: seconds must be a positive number, got %', seconds
            USING ERRCODE = '22023', HINT = 'Pass seconds => 10 (the window''s length).';
    END IF;
    IF overlap IS NULL OR NOT (overlap >= 0 AND overlap < seconds) THEN
        RAISE EXCEPTION 'qvl: chunk_video: overlap must be at least 0 and less than seconds (%), got %', seconds,
                overlap USING ERRCODE = '22023', HINT = 'Windows start seconds - overlap apart: pass overlap => 0.';
    END IF;
    RETURN jsonb_build_object('type', 'video', 'seconds', seconds, 'overlap', overlap);
END
$$;

-- Passages of at most `tokens` tokens (the model's tokenizer) of the row's last text column,
-- neighbours sharing at most `overlap`. The service also caps tokens at its QVL_EMBED_MAX_LENGTH.
CREATE OR REPLACE FUNCTION qvl.chunk_text(tokens int DEFAULT 512, overlap int DEFAULT 64) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF tokens IS NULL OR tokens < 8 THEN
        RAISE EXCEPTION 'qvl: chunk_text: tokens must be at least 8, got %', tokens USING ERRCODE = '22023',
            HINT = 'Pass tokens => 512 (at most the service''s QVL_EMBED_MAX_LENGTH).';
    END IF;
    IF overlap IS NULL OR overlap < 0 OR overlap >= tokens THEN
        RAISE EXCEPTION 'qvl: chunk_text: overlap must be at least 0 and less than tokens (%), got %', tokens,
                overlap USING ERRCODE = '22023', HINT = 'Pass overlap => 64, or 0 for passages that share nothing.';
    END IF;
    RETURN jsonb_build_object('type', 'text', 'tokens', tokens, 'overlap', overlap);
END
$$;

-- A configuration as the functions above make it (one written by hand is checked the same way).
CREATE OR REPLACE FUNCTION qvl._check_chunking(chunking jsonb) RETURNS jsonb LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    extra text;
BEGIN
    IF jsonb_typeof(chunking) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'qvl: chunking must be a jsonb object, got %', chunking USING ERRCODE = '22023',
            HINT = 'Pass chunking => qvl.chunk_pages(), qvl.chunk_video(seconds => 10) or qvl.chunk_text(tokens => 512).';
    END IF;
    SELECT string_agg(k, ', ') INTO extra FROM jsonb_object_keys(chunking) AS k
     WHERE k NOT IN ('type', 'max_pages', 'seconds', 'overlap', 'tokens');
    IF extra IS NOT NULL THEN
        RAISE EXCEPTION 'qvl: chunking has unknown keys: %', extra USING ERRCODE = '22023',
            HINT = 'Make it with qvl.chunk_pages(), qvl.chunk_video() or qvl.chunk_text().';
    END IF;
    BEGIN
        CASE chunking ->> 'type'
            WHEN 'pages' THEN RETURN qvl.chunk_pages((chunking ->> 'max_pages')::int);
            WHEN 'video' THEN RETURN qvl.chunk_video(coalesce((chunking ->> 'seconds')::float8, 10),
                                                     coalesce((chunking ->> 'overlap')::float8, 0));
            WHEN 'text' THEN RETURN qvl.chunk_text(coalesce((chunking ->> 'tokens')::int, 512),
                                                   coalesce((chunking ->> 'overlap')::int, 64));
            ELSE
                RAISE EXCEPTION 'qvl: chunking type must be pages, video or text, got %', chunking ->> 'type'
                    USING ERRCODE = '22023',
                          HINT = 'Make it with qvl.chunk_pages(), qvl.chunk_video() or qvl.chunk_text().';
        END CASE;
    EXCEPTION WHEN invalid_text_representation OR numeric_value_out_of_range THEN
        RAISE EXCEPTION 'qvl: chunking % holds a value that is not a number of the right kind', chunking
            USING ERRCODE = '22023', HINT = 'Make it with qvl.chunk_pages(), qvl.chunk_video() or qvl.chunk_text().';
    END;
END
$$;


-- Which columns the chunking splits and what goes with them: pages split the one document column,
-- video the one video column (bytes or a URI: a list of frames cannot be cut in time), text the last
-- text column. Document columns are bytea (a PDF) or text (a URI the service may read).
CREATE OR REPLACE FUNCTION qvl._check_chunk_columns(source regclass, kind text, text_columns text[],
                                                    image_columns text[], video_columns text[],
                                                    document_columns text[], chunk_context boolean)
RETURNS void LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    col text;
    typ regtype;
    others int := cardinality(text_columns) + cardinality(image_columns) + cardinality(video_columns)
                  + cardinality(document_columns) - 1;
BEGIN
    IF cardinality(document_columns) > 1 THEN
        RAISE EXCEPTION 'qvl: one document column per vectorizer (an item holds one document), got %',
                document_columns USING ERRCODE = '22023';
    END IF;
    IF cardinality(document_columns) = 1 AND kind <> 'pages' THEN
        RAISE EXCEPTION 'qvl: a document column needs chunking => qvl.chunk_pages(), not %', kind
            USING ERRCODE = '22023', HINT = 'The service embeds a PDF page by page.';
    END IF;
    IF kind = 'pages' AND cardinality(document_columns) = 0 THEN
        RAISE EXCEPTION 'qvl: chunking pages splits a document column, and none is given' USING ERRCODE = '22023',
            HINT = 'Pass document_columns => ARRAY[''pdf''] (bytea: the PDF; text: a URI the service may read).';
    END IF;
    IF kind = 'video' AND cardinality(video_columns) = 0 THEN
        RAISE EXCEPTION 'qvl: chunking video splits a video column, and none is given' USING ERRCODE = '22023',
            HINT = 'Pass video_columns => ARRAY[''video''].';
    END IF;
    IF kind = 'text' AND cardinality(text_columns) = 0 THEN
        RAISE EXCEPTION 'qvl: chunking text splits a text column, and none is given' USING ERRCODE = '22023',
            HINT = 'Pass text_columns => ARRAY[''body''] (the last one listed is split; the others ride with it).';
    END IF;
    IF NOT chunk_context AND others > 0 THEN
        RAISE EXCEPTION 'qvl: chunk_context => false embeds each chunk alone, and % other input columns are listed',
                others USING ERRCODE = '22023',
            HINT = 'List only the column that is split, or leave chunk_context out: the other columns (a title) then '
                   'go with every chunk as one item.';
    END IF;
    FOREACH col IN ARRAY document_columns LOOP
        SELECT a.atttypid::regtype INTO typ FROM pg_attribute a
         WHERE a.attrelid = source AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'qvl: % has no column %', source, col USING ERRCODE = '42703';
        END IF;
        IF typ NOT IN ('bytea'::regtype, 'text'::regtype, 'varchar'::regtype) THEN
            RAISE EXCEPTION 'qvl: column % has type %, which cannot be a document', col, typ USING ERRCODE = '42804',
                HINT = 'A document column holds a PDF (bytea) or a URI the service may read (text).';
        END IF;
    END LOOP;
    IF kind = 'video' THEN
        SELECT a.atttypid::regtype INTO typ FROM pg_attribute a
         WHERE a.attrelid = source AND a.attname = video_columns[1] AND a.attnum > 0 AND NOT a.attisdropped;
        IF typ NOT IN ('bytea'::regtype, 'text'::regtype, 'varchar'::regtype) THEN
            RAISE EXCEPTION 'qvl: chunking video cuts a video file (bytea) or URI (text), and % is %',
                    video_columns[1], typ USING ERRCODE = '42804',
                HINT = 'A list of frames (bytea[]) has no times to cut by.';
        END IF;
    END IF;
END
$$;


-- The view joining chunks to their rows (chunk_seq, locator, chunk_embedding, then the row's columns).
-- The reader's rights (security_invoker): the table's row-level security and grants hold through it.
-- It lists the table's columns as they are now, so PostgreSQL refuses to drop or retype one of them
-- while it exists: DROP COLUMN ... CASCADE drops it too, and the schema guard then makes it again
-- (qvl._follow_chunk_view). Owned by the table's owner.
CREATE OR REPLACE FUNCTION qvl._create_chunk_view(source regclass, chunks regclass, view_name text, keys name[])
RETURNS regclass LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    EXECUTE format('CREATE VIEW %s WITH (security_invoker = true) AS SELECT c.chunk_seq, c.locator, '
                   'c.embedding AS chunk_embedding, s.* FROM %s c JOIN %s s ON %s', view_name, chunks, source,
                   (SELECT string_agg(format('s.%1$I = c.%1$I', c), ' AND ') FROM unnest(keys) AS c));
    EXECUTE format('ALTER VIEW %s OWNER TO %I', view_name,
                   (SELECT pg_get_userbyid(c.relowner) FROM pg_class c WHERE c.oid = source));
    RETURN view_name::regclass;
END
$$;

-- After an ALTER TABLE of a chunked vectorizer's table (the schema guard, sql/idempotent/007_*): a view
-- that DROP COLUMN ... CASCADE took along is made again, with the table's columns as they are now.
CREATE OR REPLACE FUNCTION qvl._follow_chunk_view(vid int) RETURNS void LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v qvl.vectorizer;
    chunks regclass;
BEGIN
    SELECT * INTO v FROM qvl.vectorizer x WHERE x.id = vid;
    chunks := qvl._chunk_table(v);
    IF chunks IS NULL OR EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = v.chunk_view) THEN
        RETURN;
    END IF;
    UPDATE qvl.vectorizer x
       SET chunk_view = qvl._create_chunk_view(v.source, chunks,
                                               (SELECT format('%I.%I', n.nspname, left(c.relname || '_view', 63))
                                                  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                                                 WHERE c.oid = chunks), v.pk_columns)
     WHERE x.id = vid;
    RAISE NOTICE 'qvl: the view of the chunks of % was made again, with the table''s columns as they are now',
        v.source;
END
$$;


-- A chunk table (the key columns, chunk_seq, locator, embedding of ``vtype``; an HNSW index where ``index``
-- says so), owned like the table it derives from: its owner reads it and grants it to whom it pleases.
-- qvl.create_vectorizer's, and a blue/green shadow's (sql/idempotent/014_blue_green.sql).
CREATE OR REPLACE FUNCTION qvl._create_chunk_table(source regclass, schema_name name, table_name name, keys name[],
                                                   key_types text[], vtype text, index text, storage text,
                                                   vname text) RETURNS regclass
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    chunks regclass;
BEGIN
    EXECUTE format('CREATE TABLE %I.%I (%s, chunk_seq int NOT NULL CHECK (chunk_seq >= 0), locator jsonb NOT NULL, '
                   'embedding %s NOT NULL, PRIMARY KEY (%s, chunk_seq))', schema_name, table_name,
                   (SELECT string_agg(format('%I %s NOT NULL', c, t), ', ' ORDER BY o)
                      FROM unnest(keys, key_types) WITH ORDINALITY AS u(c, t, o)),
                   vtype, (SELECT string_agg(format('%I', c), ', ') FROM unnest(keys) AS c));
    chunks := format('%I.%I', schema_name, table_name)::regclass;
    IF index = 'hnsw' THEN
        EXECUTE format('CREATE INDEX %I ON %s USING hnsw (embedding %s.%s)', left(table_name || '_hnsw', 63), chunks,
                       qvl._vector_schema(),
                       CASE storage WHEN 'vector' THEN 'vector_cosine_ops' WHEN 'halfvec' THEN 'halfvec_cosine_ops'
                                    ELSE 'bit_hamming_ops' END);
    END IF;
    EXECUTE format('COMMENT ON TABLE %s IS %L', chunks,
                   format('qvl: the chunks of %s (vectorizer %s), kept by qvl worker', source, vname));
    EXECUTE format('ALTER TABLE %s OWNER TO %I', chunks,
                   (SELECT pg_get_userbyid(c.relowner) FROM pg_class c WHERE c.oid = source));
    RETURN chunks;
END
$$;


-- qvl.create_vectorizer with chunking (it calls this): the checks, the destination table, its index
-- and view, the catalog row, the queue, the triggers and the backfill.
CREATE OR REPLACE FUNCTION qvl._create_chunked_vectorizer(
    source regclass, name text, text_columns text[], image_columns text[], video_columns text[],
    document_columns text[], chunking jsonb, chunk_context boolean, destination name, dimensions int, storage text,
    instruction text, mode text, index text, query_instruction text
) RETURNS int LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    relname name;
    schema_name name;
    owner name;
    vname text;
    pk record;
    vtype text;
    new_id int;
    queued bigint;
    model_size int;
    chunks regclass;
    view_name name;
    clash text;
BEGIN
    relname := qvl._check_source(source);
    vname := coalesce(name, relname);
    text_columns := coalesce(text_columns, '{}');
    image_columns := coalesce(image_columns, '{}');
    video_columns := coalesce(video_columns, '{}');
    document_columns := coalesce(document_columns, '{}');
    IF chunking IS NULL THEN
        RAISE EXCEPTION 'qvl: document columns need chunking => qvl.chunk_pages()' USING ERRCODE = '22023';
    END IF;
    chunking := qvl._check_chunking(chunking);
    PERFORM qvl._check_options(storage, mode, index, 'fail');
    IF mode <> 'async' THEN
        RAISE EXCEPTION 'qvl: a chunked vectorizer embeds through the worker: mode must be async, got %', mode
            USING ERRCODE = '0A000', HINT = 'Leave mode out (async), and run qvl worker.';
    END IF;
    PERFORM qvl._check_install_allows(mode, dimensions);  -- the managed install: dimensions given, not asked
    PERFORM qvl._check_new_name(vname);
    IF destination IS NULL OR destination = 'embedding' THEN  -- (the one-vector default names a column)
        destination := left(relname || '_chunks', 63);
    END IF;
    PERFORM qvl._check_column_lists(text_columns || document_columns, image_columns, video_columns, destination);
    PERFORM qvl._check_input_columns(source, text_columns, image_columns, video_columns, mode);
    PERFORM qvl._check_chunk_columns(source, chunking ->> 'type', text_columns, image_columns, video_columns,
                                     document_columns, coalesce(chunk_context, true));
    SELECT * INTO pk FROM qvl._primary_key(source);
    PERFORM qvl._check_key_names(source, pk.pk_columns);
    SELECT c INTO clash FROM unnest(pk.pk_columns) AS c WHERE c IN ('chunk_seq', 'locator', 'embedding') LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'qvl: the key column % of % has the name of a column of the chunk table', clash, source
            USING ERRCODE = '42701', HINT = 'chunk_seq, locator and embedding are taken: rename the key column.';
    END IF;
    SELECT c INTO clash FROM pg_attribute a, LATERAL (SELECT a.attname::text AS c) x
     WHERE a.attrelid = source AND a.attnum > 0 AND NOT a.attisdropped
       AND a.attname IN ('chunk_seq', 'locator', 'chunk_embedding') LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'qvl: % has a column %, which the chunk view adds', source, clash USING ERRCODE = '42701',
            HINT = 'The view joins the chunks (chunk_seq, locator, chunk_embedding) to the row: rename the column.';
    END IF;
    SELECT n.nspname, pg_get_userbyid(c.relowner) INTO schema_name, owner
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = source;
    view_name := left(destination || '_view', 63);
    IF to_regclass(format('%I.%I', schema_name, destination)) IS NOT NULL
       OR to_regclass(format('%I.%I', schema_name, view_name)) IS NOT NULL THEN
        RAISE EXCEPTION 'qvl: %.% or %.% exists', schema_name, destination, schema_name, view_name
            USING ERRCODE = '42P07',
                  HINT = 'A chunked vectorizer makes its destination table and view: pass destination => a free name.';
    END IF;
    IF dimensions IS NULL THEN
        dimensions := qvl._full_dimensions();
    END IF;
    model_size := qvl._model_dimensions();
    vtype := qvl._vector_type(storage, dimensions, index);
    PERFORM qvl._check_dimensions(dimensions, model_size);

    chunks := qvl._create_chunk_table(source, schema_name, destination, pk.pk_columns, pk.pk_types, vtype, index,
                                      storage, vname);
    PERFORM qvl._create_chunk_view(source, chunks, format('%I.%I', schema_name, view_name), pk.pk_columns);

    INSERT INTO qvl.vectorizer (name, source, pk_columns, pk_types, text_columns, image_columns, video_columns,
                                destination, dimensions, storage, instruction, query_instruction, mode, on_error,
                                index_kind, document_columns, chunking, chunk_table, chunk_view, chunk_context)
    VALUES (vname, source, pk.pk_columns, pk.pk_types, text_columns, image_columns, video_columns, destination,
            dimensions, storage, instruction, query_instruction, mode, 'fail', index, document_columns, chunking,
            chunks, format('%I.%I', schema_name, view_name)::regclass, coalesce(chunk_context, true))
    RETURNING id INTO new_id;
    PERFORM qvl._install_objects(new_id);
    queued := qvl._queue_all(new_id);
    PERFORM pg_notify('qvl_config', new_id::text);
    IF queued > 0 THEN
        RAISE NOTICE 'qvl: vectorizer % created; % existing rows queued for the worker (qvl worker)', vname, queued;
    END IF;
    RETURN new_id;
END
$$;
