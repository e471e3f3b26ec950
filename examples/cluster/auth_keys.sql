-- The credential table every broker reads (docs/stores.md); PostgreSQL runs
-- this once, when its data volume is created.
CREATE SEQUENCE auth_keys_seq;
CREATE TABLE auth_keys (
  id int NOT NULL DEFAULT NEXTVAL ('auth_keys_seq'),
  identifier varchar(36) DEFAULT NULL,
  secret varchar(36) DEFAULT NULL,
  publish json DEFAULT NULL,
  subscribe json DEFAULT NULL,
  PRIMARY KEY (id),
  UNIQUE (identifier)
);
