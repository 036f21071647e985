-- qvl 015: blue/green for chunked vectorizers (issue 23 item 3): a shadow CHUNK TABLE, and its view,
-- beside the live one; qvl.switch_vectorizer swaps which is the vectorizer's. NULL for a shadow column.
-- The functions are in sql/idempotent/014_blue_green.sql (they read these through to_jsonb).

ALTER TABLE qvl.shadow ADD COLUMN chunk_table regclass, ADD COLUMN chunk_view regclass;
COMMENT ON COLUMN qvl.shadow.chunk_table IS
    'A chunked vectorizer''s second chunk table (destination names it); NULL: a second column';
