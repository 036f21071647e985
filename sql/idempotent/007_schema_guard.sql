-- qvl 007: the schema guard's functions (the event triggers are made once, in
-- sql/incremental/007_schema_guard.sql; those of version 10 and their functions are in
-- sql/*/010_trigger_guard.sql). Re-applied by every install.
--
-- They are SECURITY DEFINER: the owner of a table may ALTER or DROP it without any right in schema
-- qvl, and following the change means writing qvl's catalog, queue tables and trigger functions.
-- Their only inputs are the system catalogs (what the statement changed) and tables only qvl writes,
-- and every name goes through %I / %L. On a table without a vectorizer they cost one lookup of
-- qvl.vectorizer (and, while some vectorized table is partitioned, one row of qvl.ddl_partitions
-- per ALTER TABLE).

-- The columns a vectorizer depends on, in a fixed order: its key, its inputs, its destination (a
-- chunked vectorizer's, version 13: its document columns instead; its destination is a table).
-- qvl.vectorizer.attnums holds their column numbers in the same order.
CREATE OR REPLACE FUNCTION qvl._tracked_names(v qvl.vectorizer) RETURNS name[] LANGUAGE sql STABLE AS $$
    SELECT v.pk_columns || v.text_columns || v.image_columns || v.video_columns
           || CASE WHEN qvl._chunked(v) THEN qvl._document_columns(v) ELSE ARRAY[v.destination] END
$$;

-- The same, one row per column: its position in qvl._tracked_names, what the vectorizer does with it.
CREATE OR REPLACE FUNCTION qvl._tracked_columns(v qvl.vectorizer)
RETURNS TABLE(pos int, kind text, name name) LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
    SELECT u.o::int,
           CASE WHEN u.o <= cardinality(v.pk_columns) THEN 'key'
                WHEN u.o <= cardinality(v.pk_columns || v.text_columns) THEN 'text'
                WHEN u.o <= cardinality(v.pk_columns || v.text_columns || v.image_columns) THEN 'image'
                WHEN u.o <= cardinality(v.pk_columns || v.text_columns || v.image_columns || v.video_columns)
                    THEN 'video'
                WHEN qvl._chunked(v) THEN 'document'
                ELSE 'destination' END,
           u.c
      FROM unnest(qvl._tracked_names(v)) WITH ORDINALITY AS u(c, o)
     ORDER BY u.o
$$;

CREATE OR REPLACE FUNCTION qvl._column_role(kind text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE kind WHEN 'key' THEN 'key column' WHEN 'destination' THEN 'destination column'
                     ELSE 'input column' END
$$;

CREATE OR REPLACE FUNCTION qvl._drop_hint(vectorizer text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT format('drop the vectorizer first (SELECT qvl.drop_vectorizer(%L); the column stays), change the '
                  'table, then create it again (SELECT qvl.create_vectorizer(...), which queues every row).', vectorizer)
$$;


-- One vectorizer after an ALTER TABLE of its table: follow the change, or refuse it. renamed: the
-- column numbers this statement renamed (pg_event_trigger_ddl_commands() names each one).
CREATE OR REPLACE FUNCTION qvl._follow_alter(v qvl.vectorizer, renamed int[]) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    col record;
    att record;
    names name[] := '{}';
    numbers int2[] := '{}';
    key_types text[] := '{}';
    n_key int := cardinality(v.pk_columns);
    n_text int := cardinality(v.text_columns);
    n_image int := cardinality(v.image_columns);
    n_video int := cardinality(v.video_columns);
    vtype text;
    queue_type record;
    widens boolean;
    primary_key int2[];
    changed_key boolean;
    fresh qvl.vectorizer;
    i int;
BEGIN
    FOR col IN SELECT * FROM qvl._tracked_columns(v) ORDER BY pos LOOP
        -- Where the column is now. By its name, if it still has it (its recorded number may be out of
        -- date: a dump and restore renumbers columns); else, renamed by this very statement, at its
        -- recorded number. (Dropped columns never get here: qvl._ddl_dropped refuses them first.)
        SELECT a.attnum, a.attname, a.atttypid, format_type(a.atttypid, a.atttypmod) AS type INTO att
          FROM pg_attribute a
         WHERE a.attrelid = v.source AND a.attname = col.name AND a.attnum > 0 AND NOT a.attisdropped;
        IF NOT FOUND THEN
            SELECT a.attnum, a.attname, a.atttypid, format_type(a.atttypid, a.atttypmod) AS type INTO att
              FROM pg_attribute a
             WHERE a.attrelid = v.source AND a.attnum = v.attnums[col.pos] AND a.attnum = ANY (renamed)
               AND NOT a.attisdropped;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'qvl: % has no column % (the % of vectorizer %), and qvl cannot tell what became '
                                'of it', v.source, col.name, qvl._column_role(col.kind), v.name
                    USING ERRCODE = '2BP01',
                          HINT = format('Rename it back (ALTER TABLE %s RENAME COLUMN ... TO %I); or, to make this '
                                        'change, ', v.source, col.name) || qvl._drop_hint(v.name);
            END IF;
        END IF;
        names := names || att.attname;
        numbers := numbers || att.attnum;
        IF col.kind = 'key' THEN
            key_types := key_types || att.type;
            IF att.attname <> col.name AND att.attname = ANY (qvl._queue_column_names()) THEN
                RAISE EXCEPTION 'qvl: the key column % of % cannot be renamed %: the queue of vectorizer % has '
                                'a column of that name', col.name, v.source, att.attname, v.name
                    USING ERRCODE = '42701',
                          HINT = 'Choose another name; or, to use this one, ' || qvl._drop_hint(v.name);
            END IF;
            IF att.type <> v.pk_types[col.pos] THEN
                -- Follow a widening only: the same type with another modifier, or an implicit cast,
                -- between built-in types (the queue's keys are converted as the owner; a cast of
                -- another role's type would run its code as the owner).
                SELECT a.atttypid INTO queue_type FROM pg_attribute a
                 WHERE a.attrelid = to_regclass(format('qvl.queue_%s', v.id)) AND a.attname = col.name;
                widens := FOUND AND queue_type.atttypid < 16384 AND att.atttypid < 16384
                          AND (queue_type.atttypid = att.atttypid
                               OR EXISTS (SELECT 1 FROM pg_cast c WHERE c.castsource = queue_type.atttypid
                                             AND c.casttarget = att.atttypid AND c.castcontext = 'i'));
                IF NOT widens THEN
                    RAISE EXCEPTION 'qvl: the key column % of % may only widen (e.g. integer to bigint, '
                                    'varchar(n) to text), not change from % to %: vectorizer % queues rows by it',
                            att.attname, v.source, v.pk_types[col.pos], att.type, v.name
                        USING ERRCODE = '0A000', HINT = 'To make this change, ' || qvl._drop_hint(v.name);
                END IF;
            END IF;
        ELSIF col.kind = 'destination' THEN
            vtype := qvl._vector_type(v.storage, v.dimensions, v.index_kind);
            IF att.type <> vtype AND att.type <> regexp_replace(vtype, '^[^.]*\.', '') THEN
                RAISE EXCEPTION 'qvl: the destination column % of % must stay % (vectorizer % writes it), not %',
                        att.attname, v.source, regexp_replace(vtype, '^[^.]*\.', ''), v.name,
                        regexp_replace(att.type, '^[^.(]*\.', '')
                    USING ERRCODE = '0A000',
                          HINT = format('For another number of dimensions: SELECT qvl.reembed(%L, dimensions => N); '
                                        'for another storage, ', v.name) || qvl._drop_hint(v.name);
            END IF;
        END IF;
        -- Input columns cannot change type: the UPDATE trigger depends on them, and Postgres refuses.
    END LOOP;

    -- (indkey is an int2vector: its subscripts start at 0, so it is unnested rather than compared.)
    SELECT array_agg(k.attnum ORDER BY k.ord) INTO primary_key
      FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
     WHERE i.indrelid = v.source AND i.indisprimary;
    IF primary_key IS DISTINCT FROM numbers[1:n_key] THEN
        RAISE EXCEPTION 'qvl: the primary key of % must stay (%): vectorizer % refers to rows by it', v.source,
                array_to_string(names[1:n_key], ', '), v.name
            USING ERRCODE = '2BP01',
                  HINT = format('Replace it in the same statement (ALTER TABLE %s DROP CONSTRAINT ..., ADD PRIMARY '
                                'KEY (%s)); or, to key it otherwise, ', v.source, array_to_string(names[1:n_key], ', '))
                         || qvl._drop_hint(v.name);
    END IF;

    changed_key := names[1:n_key] <> v.pk_columns OR key_types <> v.pk_types;
    IF names <> qvl._tracked_names(v) OR key_types <> v.pk_types OR numbers IS DISTINCT FROM v.attnums THEN
        UPDATE qvl.vectorizer x
           SET pk_columns = names[1:n_key], pk_types = key_types,
               text_columns = coalesce(names[n_key + 1:n_key + n_text], '{}'),
               image_columns = coalesce(names[n_key + n_text + 1:n_key + n_text + n_image], '{}'),
               video_columns = coalesce(names[n_key + n_text + n_image + 1:n_key + n_text + n_image + n_video], '{}'),
               destination = CASE WHEN qvl._chunked(v) THEN v.destination ELSE names[cardinality(names)] END,
               attnums = numbers
         WHERE x.id = v.id RETURNING * INTO fresh;
        IF qvl._chunked(v) THEN  -- version 13: a chunked vectorizer's document column; its chunks' key
            UPDATE qvl.vectorizer x SET document_columns = coalesce(names[n_key + n_text + n_image + n_video + 1:], '{}')
             WHERE x.id = v.id RETURNING * INTO fresh;
            FOR i IN 1 .. n_key LOOP
                IF names[i] <> v.pk_columns[i] AND qvl._chunk_table(v) IS NOT NULL THEN
                    EXECUTE format('ALTER TABLE %s RENAME COLUMN %I TO %I', qvl._chunk_table(v), v.pk_columns[i],
                                   names[i]);
                END IF;
                IF key_types[i] <> v.pk_types[i] AND qvl._chunk_table(v) IS NOT NULL THEN
                    EXECUTE format('ALTER TABLE %s ALTER COLUMN %I TYPE %s', qvl._chunk_table(v), names[i],
                                   key_types[i]);
                END IF;
            END LOOP;
        END IF;
        -- The queue and failed tables are keyed by the same names and types as the table.
        FOR i IN 1 .. n_key LOOP
            IF names[i] <> v.pk_columns[i] THEN
                EXECUTE format('ALTER TABLE qvl.queue_%s RENAME COLUMN %I TO %I', v.id, v.pk_columns[i], names[i]);
                EXECUTE format('ALTER TABLE qvl.failed_%s RENAME COLUMN %I TO %I', v.id, v.pk_columns[i], names[i]);
            END IF;
            IF key_types[i] <> v.pk_types[i] THEN  -- no USING: converted as Postgres converted the table's
                EXECUTE format('ALTER TABLE qvl.queue_%s ALTER COLUMN %I TYPE %s', v.id, names[i], key_types[i]);
                EXECUTE format('ALTER TABLE qvl.failed_%s ALTER COLUMN %I TYPE %s', v.id, names[i], key_types[i]);
            END IF;
        END LOOP;
        IF changed_key THEN  -- the generated functions name the key; a new body is recompiled
            PERFORM qvl._create_enqueue_function(fresh);
            IF to_regprocedure(format('qvl._key_changed_%s(anyelement, anyelement)', v.id)) IS NOT NULL THEN
                PERFORM qvl._create_key_function(fresh);
            END IF;
            PERFORM qvl._secure_vectorizer(v.id);
        END IF;
    END IF;
    IF qvl._chunked(v) THEN  -- version 13: the chunk view, if DROP COLUMN ... CASCADE took it
        PERFORM qvl._follow_chunk_view(v.id);
    END IF;
    -- The worker's rights follow the table (column grants follow their columns; a new schema needs USAGE).
    PERFORM qvl._grant_worker(v.id);
    -- Workers reload the definition (names, types, the table's own name and schema).
    PERFORM pg_notify('qvl_config', v.id::text);
END
$$;


-- At the end of an ALTER TABLE: the partitions it attached to (or detached from) a partitioned
-- vectorized table, at any depth, against what qvl._ddl_altering saw at its start. Postgres gives an
-- attached partition the table's row triggers, so rows written from now on are queued, but fires none
-- for the rows it brings: those are queued here (ATTACH is a bulk load, the queue takes one row per
-- row). A partition whose own vectorizer writes the same column is refused: two vectorizers would
-- overwrite each other's vectors. A detached partition loses those triggers; its queued and failed
-- rows leave the queue here (the worker would otherwise claim each to find it gone).
CREATE OR REPLACE FUNCTION qvl._follow_partitions() RETURNS void LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    before record;
    v qvl.vectorizer;
    now_leaves oid[];
    leaf oid;
    rival record;
    cols text;
    n bigint;
    n_failed bigint;
BEGIN
    IF to_regclass('qvl.ddl_partitions') IS NULL THEN
        RETURN;
    END IF;
    FOR before IN DELETE FROM qvl.ddl_partitions WHERE backend = pg_backend_pid() RETURNING vectorizer, leaves LOOP
        SELECT * INTO v FROM qvl.vectorizer WHERE id = before.vectorizer;
        CONTINUE WHEN NOT FOUND;
        now_leaves := ARRAY(SELECT t.relid FROM pg_partition_tree(v.source) AS t WHERE t.isleaf);
        SELECT string_agg(format('%I', c), ', ') INTO cols FROM unnest(v.pk_columns) AS c;
        FOR leaf IN SELECT l FROM unnest(now_leaves) AS l WHERE l <> ALL (before.leaves) ORDER BY l LOOP
            SELECT y.name, y.source INTO rival FROM qvl.vectorizer y
             WHERE y.id <> v.id AND y.destination = v.destination
               AND y.source IN (SELECT a.relid FROM pg_partition_ancestors(leaf) AS a)
             ORDER BY y.id LIMIT 1;
            IF FOUND THEN
                RAISE EXCEPTION 'qvl: column % of % is written by vectorizer %, and would be by vectorizer % of % too',
                        v.destination, rival.source, rival.name, v.name, v.source
                    USING ERRCODE = '42710',
                          HINT = format('Drop that one first (SELECT qvl.drop_vectorizer(%L); the column stays) or '
                                        'give it another column, then attach the partition.', rival.name);
            END IF;
            EXECUTE format('INSERT INTO qvl.queue_%s (%s) SELECT %s FROM %s ON CONFLICT (%s) DO UPDATE '
                           'SET claimed_until = NULL, claimed_by = NULL, not_before = NULL, attempts = 0, '
                           'last_error = NULL', v.id, cols, cols, leaf::regclass, cols);
            GET DIAGNOSTICS n = ROW_COUNT;
            IF n > 0 THEN
                PERFORM pg_notify('qvl_queue', v.id::text);
                RAISE NOTICE 'qvl: % rows of %, now a partition of %, queued for vectorizer %', n, leaf::regclass,
                        v.source, v.name;
            END IF;
        END LOOP;
        FOR leaf IN SELECT l FROM unnest(before.leaves) AS l
                     WHERE l <> ALL (now_leaves) AND EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = l) ORDER BY l LOOP
            EXECUTE format('DELETE FROM qvl.queue_%s q WHERE EXISTS (SELECT 1 FROM %s d WHERE %s) '
                           'AND NOT EXISTS (SELECT 1 FROM %s s WHERE %s)', v.id, leaf::regclass,
                           qvl._same_key_sql(v, 'q.', 'd.'), v.source, qvl._same_key_sql(v, 'q.', 's.'));
            GET DIAGNOSTICS n = ROW_COUNT;
            EXECUTE format('DELETE FROM qvl.failed_%s q WHERE EXISTS (SELECT 1 FROM %s d WHERE %s) '
                           'AND NOT EXISTS (SELECT 1 FROM %s s WHERE %s)', v.id, leaf::regclass,
                           qvl._same_key_sql(v, 'q.', 'd.'), v.source, qvl._same_key_sql(v, 'q.', 's.'));
            GET DIAGNOSTICS n_failed = ROW_COUNT;
            IF n + n_failed > 0 THEN
                RAISE NOTICE 'qvl: % is no longer a partition of %: its % queued and % failed rows left vectorizer %',
                        leaf::regclass, v.source, n, n_failed, v.name;
            END IF;
        END LOOP;
    END LOOP;
END
$$;


-- ddl_command_end of ALTER TABLE.
CREATE OR REPLACE FUNCTION qvl._ddl_altered() RETURNS event_trigger LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v qvl.vectorizer;
    t record;
BEGIN
    IF to_regclass('qvl.vectorizer') IS NULL THEN  -- qvl half removed: never in the way of DDL
        RETURN;
    END IF;
    -- First: what follows may run ALTER TABLE of its own (of the queue tables), which starts a snapshot anew.
    PERFORM qvl._follow_partitions();
    FOR v IN SELECT x.* FROM qvl.vectorizer x
              WHERE x.source::oid IN (SELECT c.objid FROM pg_event_trigger_ddl_commands() AS c
                                       WHERE c.classid = 'pg_class'::regclass)
              ORDER BY x.id LOOP
        PERFORM qvl._follow_alter(v, ARRAY(SELECT c.objsubid FROM pg_event_trigger_ddl_commands() AS c
                                            WHERE c.classid = 'pg_class'::regclass AND c.objid = v.source::oid
                                              AND c.objsubid > 0));
    END LOOP;
    -- DISABLE TRIGGER (a bulk load, pg_restore --disable-triggers) is allowed, but said: the rows
    -- written meanwhile are never queued. So is ENABLE TRIGGER without ALWAYS: qvl's triggers are
    -- ALWAYS so that logical replication's apply (session_replication_role = replica) queues too.
    -- A partition's copies of the triggers count as the table's.
    FOR t IN SELECT x.name, g.tgrelid::regclass AS source, g.tgname, g.tgenabled
               FROM (SELECT DISTINCT c.objid FROM pg_event_trigger_ddl_commands() AS c
                      WHERE c.classid = 'pg_class'::regclass) AS altered
               JOIN pg_trigger g ON g.tgrelid = altered.objid
               JOIN qvl.vectorizer x ON g.tgname = ANY (qvl._trigger_names(x.id))
                                    AND (x.source::oid = altered.objid
                                         OR x.source IN (SELECT a.relid FROM pg_partition_ancestors(altered.objid) AS a))
              WHERE g.tgenabled <> 'A'
              ORDER BY x.id, g.tgrelid, g.tgname LOOP
        RAISE WARNING 'qvl: trigger % of vectorizer % on % is %: rows written while it does not fire are not '
                      'queued', t.tgname, t.name, t.source,
                      CASE t.tgenabled WHEN 'D' THEN 'disabled' ELSE 'not enabled ALWAYS' END
            USING HINT = format('ALTER TABLE %s ENABLE ALWAYS TRIGGER %I; then SELECT qvl.reembed(%L) queues the '
                                'rows written meanwhile.', t.source, t.tgname, t.name);
    END LOOP;
END
$$;


-- sql_drop: a column a vectorizer uses may not go (whatever command drops it); a dropped table's
-- vectorizers go with it.
CREATE OR REPLACE FUNCTION qvl._ddl_dropped() RETURNS event_trigger LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    d record;
BEGIN
    IF to_regclass('qvl.vectorizer') IS NULL THEN  -- e.g. DROP SCHEMA qvl CASCADE
        RETURN;
    END IF;
    FOR d IN SELECT x.name, x.source, o.objsubid, o.address_names, o.object_identity, t.kind
               FROM pg_event_trigger_dropped_objects() AS o
               JOIN qvl.vectorizer x ON x.source::oid = o.objid
               LEFT JOIN LATERAL qvl._tracked_columns(x) AS t ON t.name = o.address_names[3]
              WHERE o.classid = 'pg_class'::regclass
              ORDER BY o.objsubid DESC, x.id LOOP
        IF d.objsubid > 0 AND d.kind IS NOT NULL THEN
            RAISE EXCEPTION 'qvl: cannot drop % % of %: vectorizer % depends on it', qvl._column_role(d.kind),
                    d.address_names[3], d.source, d.name
                USING ERRCODE = '2BP01', HINT = 'To make this change, ' || qvl._drop_hint(d.name);
        ELSIF d.objsubid = 0 THEN
            PERFORM qvl.drop_vectorizer(d.name);
            RAISE NOTICE 'qvl: vectorizer % was dropped with its table %', d.name, d.object_identity;
        END IF;
    END LOOP;
    -- A vectorizer's trigger may go only with its table, or by qvl's own hand (qvl._mark_trigger_change,
    -- which only qvl's functions can write: a setting, as version 7 read, any role may set); after the
    -- column checks, whose error says more when a dropped input column takes a trigger along.
    FOR d IN SELECT x.name, x.source, o.object_identity
               FROM pg_event_trigger_dropped_objects() AS o
               -- a trigger's identity: "<trigger> on <schema>.<table>", as regclass prints it here
               JOIN qvl.vectorizer x ON o.object_identity IN (SELECT format('%I on %s', n, x.source)
                                                                FROM unnest(qvl._trigger_names(x.id)) AS n)
              WHERE o.classid = 'pg_trigger'::regclass
                AND NOT EXISTS (SELECT 1 FROM pg_event_trigger_dropped_objects() AS g
                                 WHERE g.classid = 'pg_class'::regclass AND g.objid = x.source::oid
                                   AND g.objsubid = 0)
                AND NOT qvl._own_trigger_change(x.id)
              ORDER BY x.id LIMIT 1 LOOP
        RAISE EXCEPTION 'qvl: cannot drop trigger %: vectorizer % queues the rows of % with it',
                d.object_identity, d.name, d.source
            USING ERRCODE = '2BP01',
                  HINT = format('To stop embedding the table: SELECT qvl.drop_vectorizer(%L). To pause it for a '
                                'bulk load: ALTER TABLE %s DISABLE TRIGGER ..., then ENABLE ALWAYS TRIGGER ... '
                                'and SELECT qvl.reembed(%L).', d.name, d.source, d.name);
    END LOOP;
END
$$;
