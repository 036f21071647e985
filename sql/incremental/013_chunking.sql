-- qvl 013: chunked vectorizers (issue 21 item 5). One row, many vectors: a PDF's pages, a video's
-- windows, a long text's passages, each a row of a destination table with its locator.
--
--   document_columns  bytea (a PDF) or text (a URI the service may read) columns: Part.document(_uri)
--   chunking          how the service splits each row's item (qvl.chunk_pages / chunk_video / chunk_text,
--                     sql/idempotent/013_chunking.sql); NULL: one vector per row, in a column of the table
--   chunk_table       a chunked vectorizer's destination table (key columns, chunk_seq, locator,
--                     embedding); destination then names that table, not a column
--   chunk_view        the view joining the chunks to their rows
--   chunk_context     whether the row's other input columns (a title) go with every chunk as one item

ALTER TABLE qvl.vectorizer
    ADD COLUMN document_columns name[] NOT NULL DEFAULT '{}',
    ADD COLUMN chunking jsonb CHECK (chunking IS NULL OR chunking ->> 'type' IN ('pages', 'video', 'text')),
    ADD COLUMN chunk_table regclass,
    ADD COLUMN chunk_view regclass,
    ADD COLUMN chunk_context boolean NOT NULL DEFAULT true,
    ADD CHECK ((chunking IS NULL) = (chunk_table IS NULL));
COMMENT ON COLUMN qvl.vectorizer.chunking IS
    'How each row is split (qvl.chunk_pages/chunk_video/chunk_text); NULL: one vector per row';
