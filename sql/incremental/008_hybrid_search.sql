-- qvl 008: hybrid search (full text and vectors).
--
-- qvl.vectorizer gains fulltext: the text search configuration (schema-qualified name, e.g.
-- pg_catalog.english) of the vectorizer's full-text index, NULL without one. The index itself is an
-- expression GIN index on the source table over the vectorizer's text columns (no column added, no
-- table rewrite); qvl.set_fulltext and create_vectorizer(..., fulltext => ...) make it
-- (sql/idempotent/008_hybrid_search.sql). A name, not regconfig: pg_upgrade refuses user tables
-- with reg* columns other than regclass, regtype and regrole.

ALTER TABLE qvl.vectorizer ADD COLUMN fulltext text;
COMMENT ON COLUMN qvl.vectorizer.fulltext IS
    'Text search configuration of the full-text index (qvl.hybrid_search); NULL: none';
