-- qvl 005: TLS to the service from SQL.
--
-- qvl.service gains ca_file: the CA certificate(s), a PEM file on the database server, that an
-- https:// service's certificate is verified against (NULL: the system's CAs). Like the address and
-- the token it is read only by the owner (qvl._call). qvl.set_service takes it (sql/idempotent/005_*).
--
-- (001 ran ALTER DEFAULT PRIVILEGES IN SCHEMA qvl REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC: a
-- per-schema entry cannot take away PUBLIC's global default, so it stored nothing and there is
-- nothing to undo; qvl._apply_grants revokes function by function.)

ALTER TABLE qvl.service ADD COLUMN ca_file text;
ALTER TABLE qvl.service ADD CONSTRAINT service_ca_file_needs_https CHECK (ca_file IS NULL OR url ~ '^https://');
