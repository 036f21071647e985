-- qvl 010: the schema guard closed (issue 19).
--
--   qvl.trigger_changes  qvl's own changes of a vectorizer's triggers: qvl's functions write a row before
--                        they drop or make them and delete it after, in the same transaction
--                        (qvl._mark_trigger_change). The guard lets those changes through and refuses any
--                        other DROP, CREATE OR REPLACE or ALTER TRIGGER of them. Only the installing role
--                        writes it: version 7 read a setting (qvl.dropping_triggers) that any role may set.
--   qvl_trigger_change   ddl_command_end of CREATE TRIGGER and ALTER TRIGGER: qvl._ddl_trigger_changed
--
-- As in 007: the event trigger's function is made empty here and gets its body from
-- sql/idempotent/007_schema_guard.sql. Existing vectorizers get this version's triggers (a key change
-- and TRUNCATE follow the queue) from sql/idempotent/010_trigger_guard.sql.

CREATE TABLE qvl.trigger_changes (vectorizer int NOT NULL);
REVOKE ALL ON qvl.trigger_changes FROM PUBLIC;

CREATE OR REPLACE FUNCTION qvl._ddl_trigger_changed() RETURNS event_trigger LANGUAGE plpgsql AS $$ BEGIN END $$;

CREATE EVENT TRIGGER qvl_trigger_change ON ddl_command_end WHEN TAG IN ('CREATE TRIGGER', 'ALTER TRIGGER')
    EXECUTE FUNCTION qvl._ddl_trigger_changed();
