-- qvl 010: every vectorizer gets the triggers and generated functions of this version (a vectorizer
-- made by an older qvl lacks the key and truncate triggers). After the schema guard's functions
-- (sql/idempotent/007_*), which must know qvl's own trigger changes for what they are.
SELECT qvl._refresh_triggers();
