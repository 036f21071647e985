-- qvl 002: calling the model service from SQL (PL/Python, standard library only).
--
-- PL/Python runs the server's own Python, not the project's environment, so the library these
-- functions call (the modules of connectors/postgres/plpy/) uses the standard library and talks to
-- the service's HTTP JSON API (docs/api.md).
--
-- Re-applied by every install (sql/idempotent/). The installer writes the library, bundled into one
-- text, into qvl._load() at the `# qvl:library` marker and the lines that fetch it from GD (shared by
-- every PL/Python function of a backend) at each `# qvl:prologue` marker. The GD key is the bundle's
-- hash, so sessions that loaded an older library load the new one after an upgrade. Only qvl._call is
-- SECURITY DEFINER: it alone reads qvl.service (address and token) and holds the per-backend
-- keep-alive connections.

CREATE OR REPLACE FUNCTION qvl._load() RETURNS void LANGUAGE plpython3u VOLATILE AS $py$
# qvl:library
$py$;


-- The one door to the service: reads the address and token as the owner. Returns the HTTP status
-- (0 when unreachable) and body instead of raising, so callers can name the failing item or fall
-- back to the queue. Anyone allowed to embed may call it; it cannot reveal or change the address.
CREATE OR REPLACE FUNCTION qvl._call(endpoint text, request text, OUT status int, OUT response text)
LANGUAGE plpython3u VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $py$
# qvl:prologue
return lib.send(endpoint, request)
$py$;


-- The address (and bearer token) of the service; only the installing role may call this.
CREATE OR REPLACE FUNCTION qvl.set_service(url text, token text DEFAULT NULL, timeout_s real DEFAULT NULL)
RETURNS void LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
BEGIN
    INSERT INTO qvl.service AS s (singleton, url, token, timeout_s, updated_at)
    VALUES (true, rtrim(url, '/'), token, coalesce(timeout_s, 60), now())
    ON CONFLICT (singleton) DO UPDATE
        SET url = EXCLUDED.url, token = EXCLUDED.token, timeout_s = coalesce(timeout_s, s.timeout_s),
            updated_at = now();
END
$$;
COMMENT ON FUNCTION qvl.set_service(text, text, real) IS 'Point qvl at the model service (installing role only)';


CREATE OR REPLACE FUNCTION qvl.service_info() RETURNS jsonb LANGUAGE plpython3u VOLATILE AS $py$
# qvl:prologue
return lib.service_info_sql()
$py$;
COMMENT ON FUNCTION qvl.service_info() IS 'The service''s models, sizes and limits (GET /v1/info)';


CREATE OR REPLACE FUNCTION qvl.embed(text text DEFAULT NULL, image bytea DEFAULT NULL, video bytea DEFAULT NULL,
                                     instruction text DEFAULT NULL, dimensions int DEFAULT NULL)
RETURNS vector LANGUAGE plpython3u VOLATILE AS $py$
# qvl:prologue
return lib.embed_sql(text, image, video, instruction, dimensions, "vector")
$py$;
COMMENT ON FUNCTION qvl.embed(text, bytea, bytea, text, int) IS
    'One embedding of text, an image and/or a video (one joint item); instruction NULL = the service default';


CREATE OR REPLACE FUNCTION qvl.embed_halfvec(text text DEFAULT NULL, image bytea DEFAULT NULL, video bytea DEFAULT NULL,
                                             instruction text DEFAULT NULL, dimensions int DEFAULT NULL)
RETURNS halfvec LANGUAGE plpython3u VOLATILE AS $py$
# qvl:prologue
return lib.embed_sql(text, image, video, instruction, dimensions, "halfvec")
$py$;
COMMENT ON FUNCTION qvl.embed_halfvec(text, bytea, bytea, text, int) IS 'qvl.embed as halfvec';


-- Rerank: (1-based position in the array, score) best first; top_k limits the rows.
CREATE OR REPLACE FUNCTION qvl.rerank(query text, documents text[],
                                      instruction text DEFAULT NULL, top_k int DEFAULT NULL)
RETURNS TABLE(index int, score real) LANGUAGE plpython3u VOLATILE AS $py$
# qvl:prologue
return lib.rerank_sql(lib.text_item(query), [lib.text_item(d) for d in (documents or [])], instruction, top_k)
$py$;

CREATE OR REPLACE FUNCTION qvl.rerank(query text, documents bytea[],
                                      instruction text DEFAULT NULL, top_k int DEFAULT NULL)
RETURNS TABLE(index int, score real) LANGUAGE plpython3u VOLATILE AS $py$
# qvl:prologue
return lib.rerank_sql(lib.text_item(query), [lib.image_item(d) for d in (documents or [])], instruction, top_k)
$py$;

CREATE OR REPLACE FUNCTION qvl.rerank(query bytea, documents text[],
                                      instruction text DEFAULT NULL, top_k int DEFAULT NULL)
RETURNS TABLE(index int, score real) LANGUAGE plpython3u VOLATILE AS $py$
# qvl:prologue
return lib.rerank_sql(lib.image_item(query), [lib.text_item(d) for d in (documents or [])], instruction, top_k)
$py$;

CREATE OR REPLACE FUNCTION qvl.rerank(query bytea, documents bytea[],
                                      instruction text DEFAULT NULL, top_k int DEFAULT NULL)
RETURNS TABLE(index int, score real) LANGUAGE plpython3u VOLATILE AS $py$
# qvl:prologue
return lib.rerank_sql(lib.image_item(query), [lib.image_item(d) for d in (documents or [])], instruction, top_k)
$py$;
