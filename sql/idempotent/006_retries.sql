-- qvl 006: async vectorizers made before version 6 get the trigger function that clears a row's
-- backoff (not_before) when it changes. Cheap (no table lock) and idempotent.
SELECT qvl._create_enqueue_function(v) FROM qvl.vectorizer v WHERE v.mode = 'async';
