-- qvl 010: the schema guard closed (issue 19 items 4, 5 and 8).
--
--   qvl.trigger_changes  qvl's own changes of a vectorizer's triggers: qvl's functions write a row before
--                        they drop or make them and delete it after, in the same transaction
--                        (qvl._mark_trigger_change). The guard lets those changes through and refuses any
--                        other DROP TRIGGER, CREATE TRIGGER (OR REPLACE) or ALTER TRIGGER of them. Only
--                        the installing role writes it: version 7 read a setting (qvl.dropping_triggers)
--                        that any role may set.
--   qvl.ddl_partitions   the leaf partitions of the partitioned vectorized tables when an ALTER TABLE
--                        starts, per backend: at its end qvl._follow_partitions queues the rows of the
--                        partitions it attached and drops from the queue those of the ones it detached.
--   qvl_trigger_change     ddl_command_end of CREATE TRIGGER and ALTER TRIGGER: qvl._ddl_trigger_changed
--   qvl_alter_table_start  ddl_command_start of ALTER TABLE: qvl._ddl_altering
--
-- As in 007: the event triggers' functions are made empty here and get their bodies from
-- sql/idempotent/010_trigger_guard.sql, which also gives existing vectorizers this version's
-- triggers (a key change and TRUNCATE follow the queue).

CREATE TABLE qvl.trigger_changes (vectorizer int NOT NULL);
CREATE TABLE qvl.ddl_partitions (backend int NOT NULL, vectorizer int NOT NULL, leaves oid[] NOT NULL);
REVOKE ALL ON qvl.trigger_changes, qvl.ddl_partitions FROM PUBLIC;

CREATE FUNCTION qvl._ddl_trigger_changed() RETURNS event_trigger LANGUAGE plpgsql AS $$ BEGIN END $$;
CREATE FUNCTION qvl._ddl_altering() RETURNS event_trigger LANGUAGE plpgsql AS $$ BEGIN END $$;

CREATE EVENT TRIGGER qvl_trigger_change ON ddl_command_end WHEN TAG IN ('CREATE TRIGGER', 'ALTER TRIGGER')
    EXECUTE FUNCTION qvl._ddl_trigger_changed();
CREATE EVENT TRIGGER qvl_alter_table_start ON ddl_command_start WHEN TAG IN ('ALTER TABLE')
    EXECUTE FUNCTION qvl._ddl_altering();
