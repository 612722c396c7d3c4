-- The read store's three roles, least privilege each. A DBA runs this once,
-- connected to the read model's database as a role that may create roles
-- (psql -d read_model -f deploy/postgres/roles.sql), then gives each role a
-- password (\password cqrs_migrator, ...) and puts the three URLs in the
-- Secrets read-store-migrator, read-store and read-store-reader
-- (deploy/README.md). Safe to run again.
--
--   cqrs_migrator   owns the schema: `projector migrate` (the projector
--                   pod's initContainer) creates and changes the tables.
--   cqrs_projector  reads and writes rows, never the schema: the projector
--                   (READ_STORE_MIGRATE=false) and `projector rebuild`.
--   cqrs_reader     SELECT only: the read-service.
--
-- A read model created before these roles, by another role: make the
-- migrator its owner (REASSIGN OWNED BY <that role> TO cqrs_migrator).
--
-- projector/tests/e2e/roles.rs runs the system under exactly these roles.

DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cqrs_migrator') THEN CREATE ROLE cqrs_migrator LOGIN; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cqrs_projector') THEN CREATE ROLE cqrs_projector LOGIN; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cqrs_reader') THEN CREATE ROLE cqrs_reader LOGIN; END IF;
END
$$;

-- Since PostgreSQL 15 nobody may create in `public` unless granted.
GRANT USAGE, CREATE ON SCHEMA public TO cqrs_migrator;
GRANT USAGE ON SCHEMA public TO cqrs_projector, cqrs_reader;

-- Tables the migrator creates from now on (every migration, sqlx's own
-- _sqlx_migrations included, which the others read to check the schema).
ALTER DEFAULT PRIVILEGES FOR ROLE cqrs_migrator IN SCHEMA public
  GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO cqrs_projector;
ALTER DEFAULT PRIVILEGES FOR ROLE cqrs_migrator IN SCHEMA public
  GRANT SELECT ON TABLES TO cqrs_reader;
ALTER DEFAULT PRIVILEGES FOR ROLE cqrs_migrator IN SCHEMA public
  GRANT USAGE, SELECT ON SEQUENCES TO cqrs_projector;

-- Tables that already exist (a read model created before these roles, by
-- another role): the same rights.
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO cqrs_projector;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO cqrs_reader;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO cqrs_projector;
