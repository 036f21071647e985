-- qvl 007: the schema guard. Event triggers keep every vectorizer in step with changes of its table:
-- ALTER TABLE is followed (a renamed key, input or destination column, a widened key) or refused
-- with a HINT (a dropped column, a key type that does not widen, a retyped destination, a lost
-- primary key); a dropped table takes its vectorizers with it. docs/postgres.md has the rule per change.
--
--   qvl_alter_table  ddl_command_end of ALTER TABLE: follows or refuses
--   qvl_sql_drop     sql_drop: a dropped column a vectorizer uses is refused (whatever command dropped
--                    it: ALTER TABLE, DROP DOMAIN ... CASCADE); a dropped table's vectorizers are dropped
--
-- Event triggers need a superuser (as PL/Python does). An event trigger names its function, which
-- must exist first, and this file runs before any idempotent one: so the functions are made here
-- empty, and get their bodies from sql/idempotent/007_schema_guard.sql (re-applied by every
-- install; replacing a function's body keeps the function, so these triggers call the new body).

-- The column numbers of the columns a vectorizer uses (key, inputs, destination, in that order):
-- a rename keeps a column's number, so after a RENAME COLUMN the guard knows what became of it.
ALTER TABLE qvl.vectorizer ADD COLUMN attnums int2[];
UPDATE qvl.vectorizer v
   SET attnums = (SELECT array_agg(a.attnum ORDER BY u.o)
                    FROM unnest(v.pk_columns || v.text_columns || v.image_columns || v.video_columns
                                || v.destination) WITH ORDINALITY AS u(c, o)
                    LEFT JOIN pg_attribute a ON a.attrelid = v.source AND a.attname = u.c
                     AND a.attnum > 0 AND NOT a.attisdropped);

-- Vectorizers of tables dropped before this version: dropped as the guard now drops them.
DO $$
DECLARE
    vname text;
BEGIN
    FOR vname IN SELECT v.name FROM qvl.vectorizer v WHERE NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = v.source)
    LOOP
        EXECUTE 'SELECT qvl.drop_vectorizer($1)' USING vname;
        RAISE NOTICE 'qvl: vectorizer % was dropped: its table no longer exists', vname;
    END LOOP;
END
$$;

CREATE FUNCTION qvl._ddl_altered() RETURNS event_trigger LANGUAGE plpgsql AS $$ BEGIN END $$;
CREATE FUNCTION qvl._ddl_dropped() RETURNS event_trigger LANGUAGE plpgsql AS $$ BEGIN END $$;

CREATE EVENT TRIGGER qvl_alter_table ON ddl_command_end WHEN TAG IN ('ALTER TABLE')
    EXECUTE FUNCTION qvl._ddl_altered();
CREATE EVENT TRIGGER qvl_sql_drop ON sql_drop
    EXECUTE FUNCTION qvl._ddl_dropped();
