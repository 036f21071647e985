-- qvl 011: model identity (issue 23 item 2). A vector is comparable only with vectors of the same model
-- (docs/model-upgrades.md): each vectorizer records the model its vectors came from.
--
--   model_fingerprint  the service's fingerprint of the model that made the vectors in the vectorizer's
--                      column (16 hex digits, as /v1/info lists them); NULL until the first write records
--                      it, and again after qvl.reembed adopts the served model. The worker pins its
--                      streams to it and the query functions send it: another model's service refuses.
--   model_name         that model's name as the service reported it (for the words of a refusal).
--
-- Vectorizers of an older version start with NULL: their next write records the model then served.
-- The function that records it (qvl._record_model) is in sql/idempotent/011_model_identity.sql.

ALTER TABLE qvl.vectorizer ADD COLUMN model_fingerprint text CHECK (model_fingerprint ~ '^[0-9a-f]{16}$'),
                           ADD COLUMN model_name text;
COMMENT ON COLUMN qvl.vectorizer.model_fingerprint IS
    'Fingerprint of the model whose vectors the column holds (NULL: none recorded yet); see qvl.reembed';
