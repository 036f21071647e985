-- qvl 005: qvl.set_service with a CA file (TLS). Re-applied by every install (sql/idempotent/).

-- The version 2 signature (url, token, timeout_s) would make calls with defaults ambiguous.
DROP FUNCTION IF EXISTS qvl.set_service(text, text, real);

-- The address (and bearer token) of the service; only the installing role may call this. An
-- https:// service's certificate, and its host name, are verified against ca_file (a PEM file the
-- database server may read), else against the system's CAs.
CREATE OR REPLACE FUNCTION qvl.set_service(url text, token text DEFAULT NULL, timeout_s real DEFAULT NULL,
                                           ca_file text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
BEGIN
    IF ca_file IS NOT NULL AND url !~ '^https://' THEN
        RAISE EXCEPTION 'qvl: a CA file is for an https:// service, not %', url USING ERRCODE = '22023',
            HINT = 'Serve TLS (QVL_TLS_CERT, QVL_TLS_KEY) and give the https:// address.';
    END IF;
    INSERT INTO qvl.service AS s (singleton, url, token, timeout_s, ca_file, updated_at)
    VALUES (true, rtrim(url, '/'), token, coalesce(timeout_s, 60), ca_file, now())
    ON CONFLICT (singleton) DO UPDATE
        SET url = EXCLUDED.url, token = EXCLUDED.token, timeout_s = coalesce(timeout_s, s.timeout_s),
            ca_file = EXCLUDED.ca_file, updated_at = now();
END
$$;
COMMENT ON FUNCTION qvl.set_service(text, text, real, text) IS
    'Point qvl at the model service (installing role only); ca_file verifies an https:// service';
