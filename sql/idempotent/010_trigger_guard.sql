-- qvl 010: the schema guard's functions of version 10 (their event triggers are made once, in
-- sql/incremental/010_trigger_guard.sql; the rest of the guard is sql/idempotent/007_schema_guard.sql),
-- and every vectorizer gets the triggers and generated functions of this version. Re-applied by every
-- install once the schema is at version 10.

-- ddl_command_start of ALTER TABLE (version 10): the leaf partitions of every partitioned vectorized
-- table, kept (per backend, in a table only qvl writes) for qvl._follow_partitions at the command's
-- end. The command does not say here which table it alters; a database without partitioned
-- vectorized tables writes nothing.
CREATE OR REPLACE FUNCTION qvl._ddl_altering() RETURNS event_trigger LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF to_regclass('qvl.vectorizer') IS NULL OR to_regclass('qvl.ddl_partitions') IS NULL THEN
        RETURN;
    END IF;
    DELETE FROM qvl.ddl_partitions WHERE backend = pg_backend_pid();
    INSERT INTO qvl.ddl_partitions (backend, vectorizer, leaves)
    SELECT pg_backend_pid(), x.id, ARRAY(SELECT t.relid FROM pg_partition_tree(x.source) AS t WHERE t.isleaf)
      FROM qvl.vectorizer x JOIN pg_class c ON c.oid = x.source
     WHERE c.relkind = 'p';
END
$$;


-- ddl_command_end of CREATE TRIGGER and ALTER TRIGGER (version 10): a vectorizer's trigger may be made
-- or changed by qvl's own hand only (qvl._mark_trigger_change). CREATE OR REPLACE TRIGGER would put
-- the owner's trigger in its place; ALTER TRIGGER ... RENAME would take it out of the guard's sight (a
-- later DROP or DISABLE of it went unnoticed) and out of qvl.drop_vectorizer's. A trigger is the
-- vectorizer's by its name, or by its function, on the table or one of its partitions.
CREATE OR REPLACE FUNCTION qvl._ddl_trigger_changed() RETURNS event_trigger LANGUAGE plpgsql VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    d record;
    gone name[];
    verb text;
BEGIN
    IF to_regclass('qvl.vectorizer') IS NULL THEN
        RETURN;
    END IF;
    FOR d IN SELECT x.id, x.name, x.mode, x.source, g.tgname, g.tgrelid::regclass AS tbl, c.command_tag
               FROM pg_event_trigger_ddl_commands() AS c
               JOIN pg_trigger g ON g.oid = c.objid
               JOIN qvl.vectorizer x ON (x.source = g.tgrelid
                                         OR x.source IN (SELECT a.relid FROM pg_partition_ancestors(g.tgrelid) AS a))
                                    AND (g.tgname = ANY (qvl._trigger_names(x.id))
                                         OR g.tgfoid = to_regprocedure(format('qvl._enqueue_%s()', x.id))
                                         OR (g.tgfoid = to_regprocedure('qvl._sync_embed()')  -- its argument: x.id
                                             AND encode(g.tgargs, 'escape') = x.id || '\000'))
              WHERE c.classid = 'pg_trigger'::regclass
              ORDER BY x.id LOOP
        CONTINUE WHEN qvl._own_trigger_change(d.id);
        -- A rename leaves one of the vectorizer's names missing: that is the trigger's old name.
        gone := ARRAY(SELECT n FROM unnest(qvl._mode_trigger_names(d.id, d.mode)) AS n
                       WHERE NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = d.source AND t.tgname = n));
        verb := CASE WHEN d.command_tag = 'CREATE TRIGGER' AND d.tgname = ANY (qvl._trigger_names(d.id)) THEN 'replace'
                     WHEN d.command_tag = 'CREATE TRIGGER' THEN 'create'
                     WHEN cardinality(gone) = 1 THEN 'rename' ELSE 'alter' END;
        RAISE EXCEPTION 'qvl: cannot % trigger % on %: vectorizer % queues the rows of % with it', verb,
                CASE verb WHEN 'rename' THEN gone[1] ELSE d.tgname END, d.tbl, d.name, d.source
            USING ERRCODE = '2BP01',
                  HINT = format('Its triggers are qvl''s to make and change. To stop embedding the table: SELECT '
                                'qvl.drop_vectorizer(%L). To pause it for a bulk load: ALTER TABLE %s DISABLE TRIGGER '
                                '..., then ENABLE ALWAYS TRIGGER ... and SELECT qvl.reembed(%L).', d.name, d.source,
                                d.name);
    END LOOP;
END
$$;


-- A vectorizer made by an older qvl lacks the key and truncate triggers. After the guard's functions,
-- which must know qvl's own trigger changes for what they are.
SELECT qvl._refresh_triggers();
