-- Provenance of every row (docs/telemetry.md, "How fresh is an answer"):
-- when the projector wrote it and the traceparent of the projection span
-- that did; history rows also keep the traceparent of the command's
-- PRODUCER span that the event carried. Only added, and nullable: rows
-- written before this migration have none, and a previous release keeps
-- running on this schema (docs/adr/0003).
ALTER TABLE account_summary ADD COLUMN projected_at_us BIGINT;
ALTER TABLE account_summary ADD COLUMN projection_trace TEXT;
ALTER TABLE account_history ADD COLUMN command_trace TEXT;
ALTER TABLE account_history ADD COLUMN projected_at_us BIGINT;
ALTER TABLE account_history ADD COLUMN projection_trace TEXT;
