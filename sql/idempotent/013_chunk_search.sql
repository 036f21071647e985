-- qvl 013: search over a chunked vectorizer's chunks (issue 21 item 5): PL/Python, kept apart from the
-- plain SQL of sql/idempotent/013_chunking.sql. Re-applied by every install once the schema is at version 13.
--
-- qvl.search_chunks(vectorizer, query, k, candidates, filter, rerank) -> (pk, chunk_seq, locator, distance,
--   score): the `candidates` nearest chunks of the rows that pass the filter, then the reranker over each
--   candidate's part (the page of the row's document, the span of its video, the passage of its text,
--   with the row's other input columns as the chunk was embedded); best first, k of them. Without
--   rerank: nearest first, score NULL. qvl.search on a chunked vectorizer ranks rows by their best part
--   (connectors/postgres/plpy/chunk_search.py).
--
-- As qvl.search (sql/idempotent/004_search.sql): run as the caller (their rights and row-level security
-- on the table and on the chunk table), read-only; the filter is one condition on the table's columns.

CREATE OR REPLACE FUNCTION qvl.search_chunks(vectorizer text, query text, k int DEFAULT 10, candidates int DEFAULT 100,
                                             filter text DEFAULT NULL, rerank boolean DEFAULT true)
RETURNS TABLE(pk text, chunk_seq int, locator jsonb, distance real, score real) LANGUAGE plpython3u VOLATILE
SET transaction_read_only = on AS $py$
# qvl:prologue
return lib.search_chunks_rows(vectorizer, lib.text_item(query), k, candidates, rerank, filter)
$py$;
COMMENT ON FUNCTION qvl.search_chunks(text, text, int, int, text, boolean) IS
    'Text query over a chunked vectorizer: the nearest chunks (pages, clips, passages), reranked by their parts';

CREATE OR REPLACE FUNCTION qvl.search_chunks(vectorizer text, query bytea, k int DEFAULT 10, candidates int DEFAULT 100,
                                             filter text DEFAULT NULL, rerank boolean DEFAULT true)
RETURNS TABLE(pk text, chunk_seq int, locator jsonb, distance real, score real) LANGUAGE plpython3u VOLATILE
SET transaction_read_only = on AS $py$
# qvl:prologue
return lib.search_chunks_rows(vectorizer, lib.image_item(query), k, candidates, rerank, filter)
$py$;
COMMENT ON FUNCTION qvl.search_chunks(text, bytea, int, int, text, boolean) IS
    'Image query over a chunked vectorizer: the nearest chunks, reranked by their parts';

-- The structured (jsonb) filter, third and without a default (as qvl.search's): a call without a
-- filter, or with a text one, names the functions above.
CREATE OR REPLACE FUNCTION qvl.search_chunks(vectorizer text, query text, filter jsonb, k int DEFAULT 10,
                                             candidates int DEFAULT 100, rerank boolean DEFAULT true)
RETURNS TABLE(pk text, chunk_seq int, locator jsonb, distance real, score real) LANGUAGE plpython3u VOLATILE
SET transaction_read_only = on AS $py$
# qvl:prologue
return lib.search_chunks_rows(vectorizer, lib.text_item(query), k, candidates, rerank, lib.structured(filter))
$py$;
COMMENT ON FUNCTION qvl.search_chunks(text, text, jsonb, int, int, boolean) IS
    'Text query over a chunked vectorizer under a structured (jsonb) filter';
