-- qvl 005: qvl.set_service with a CA file (TLS). Re-applied by every install (sql/idempotent/).

-- The version 2 signature (url, token, timeout_s) would make calls with defaults ambiguous.
-- (Only where it exists: DROP ... IF EXISTS would NOTICE "does not exist, skipping".)
DO $$ BEGIN
    IF to_regprocedure('qvl.set_service(text, text, real)') IS NOT NULL THEN
        DROP FUNCTION qvl.set_service(text, text, real);
    END IF;
END $$;

-- Checks the address list given to qvl.set_service and returns it as qvl.service keeps it: one
-- address or several replicas, comma-separated, each http:// or https:// with a host and a port
-- (a bad one is a 22023 error naming what is wrong). Private (qvl._apply_grants revokes it from PUBLIC).
CREATE OR REPLACE FUNCTION qvl._check_service(url text, ca_file text) RETURNS text
LANGUAGE plpython3u STABLE SET search_path = pg_catalog, pg_temp AS $py$
# qvl:prologue
return lib.check_service_sql(url, ca_file)
$py$;

-- The address (and bearer token) of the service; only the installing role may call this. ``url``
-- is one address or several replicas, comma-separated ('http://qvl-a:8080,http://qvl-b:8080'):
-- the SQL functions fail over between them (docs/scale-out.md). An https:// service's certificate,
-- and its host name, are verified against ca_file (a PEM file the database server may read), else
-- against the system's CAs; with a CA file every address must be https://.
CREATE OR REPLACE FUNCTION qvl.set_service(url text, token text DEFAULT NULL, timeout_s real DEFAULT NULL,
                                           ca_file text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    checked text := qvl._check_service(url, ca_file);
BEGIN
    INSERT INTO qvl.service AS s (singleton, url, token, timeout_s, ca_file, updated_at)
    VALUES (true, checked, token, coalesce(timeout_s, 60), ca_file, now())
    ON CONFLICT (singleton) DO UPDATE
        SET url = EXCLUDED.url, token = EXCLUDED.token, timeout_s = coalesce(timeout_s, s.timeout_s),
            ca_file = EXCLUDED.ca_file, updated_at = now();
END
$$;
COMMENT ON FUNCTION qvl.set_service(text, text, real, text) IS
    'Point qvl at the model service: one address or replicas, comma-separated (installing role only); '
    'ca_file verifies an https:// service';
