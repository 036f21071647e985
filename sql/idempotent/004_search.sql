-- qvl 004: two-stage search in one call.
--
-- qvl.search(vectorizer, query, k, candidates, rerank): the query is embedded with the query
-- instruction (the vectorizer's query_instruction, else the service's), the `candidates` nearest
-- rows come from the vector index, and the reranker scores each candidate's own columns (text,
-- images, video) against the query. Rows come back best first: by score, or by distance when
-- rerank => false (score NULL). pk is the primary key as text (ROW(...)::text when composite).
-- SECURITY INVOKER: the caller's privileges and row-level security apply to the table read.
-- Re-applied by every install (sql/idempotent/).

CREATE OR REPLACE FUNCTION qvl.search(vectorizer text, query text, k int DEFAULT 10, candidates int DEFAULT 100,
                                      rerank boolean DEFAULT true)
RETURNS TABLE(pk text, distance real, score real) LANGUAGE plpython3u VOLATILE
SET search_path = pg_catalog, pg_temp AS $py$
# qvl:prologue
return lib.search_rows(vectorizer, lib.text_item(query), k, candidates, rerank)
$py$;
COMMENT ON FUNCTION qvl.search(text, text, int, int, boolean) IS 'Text query: ANN recall, then rerank';

CREATE OR REPLACE FUNCTION qvl.search(vectorizer text, query bytea, k int DEFAULT 10, candidates int DEFAULT 100,
                                      rerank boolean DEFAULT true)
RETURNS TABLE(pk text, distance real, score real) LANGUAGE plpython3u VOLATILE
SET search_path = pg_catalog, pg_temp AS $py$
# qvl:prologue
return lib.search_rows(vectorizer, lib.image_item(query), k, candidates, rerank)
$py$;
COMMENT ON FUNCTION qvl.search(text, bytea, int, int, boolean) IS 'Image query: ANN recall, then rerank';
