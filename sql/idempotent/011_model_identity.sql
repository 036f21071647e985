-- qvl 011: model identity (issue 23 item 2): the function the writers of vectors record the model with.
-- Re-applied by every install once the schema is at version 11 (the columns: sql/incremental/011_*).

-- The model of the vectorizer's vectors: ``fingerprint`` (and its name) when none is recorded yet, else
-- the one recorded, which the caller compares with the model its vectors came from and writes nothing
-- when they differ. Called inside the write's transaction, so the first write and its record commit
-- together; two first writes by two models at once: the second waits for the first and gets its model.
-- SECURITY DEFINER: the worker's role may not update qvl.vectorizer, only record a model where none is.
CREATE OR REPLACE FUNCTION qvl._record_model(vid int, fingerprint text, model text) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    recorded text;
BEGIN
    UPDATE qvl.vectorizer SET model_fingerprint = fingerprint, model_name = model
     WHERE id = vid AND model_fingerprint IS NULL;
    SELECT v.model_fingerprint INTO recorded FROM qvl.vectorizer v WHERE v.id = vid;
    RETURN recorded;
END
$$;
