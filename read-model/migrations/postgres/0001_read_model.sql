-- The read model (PostgreSQL). Times are microseconds since the Unix epoch.
-- Ids and owners use the "C" collation: byte order, as in SQLite, so that
-- paging order is the same on both stores.
CREATE TABLE account_summary (
    account_id    TEXT COLLATE "C" PRIMARY KEY,
    owner         TEXT COLLATE "C" NOT NULL,
    balance       BIGINT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('open', 'closed')),
    version       BIGINT NOT NULL,
    position      BIGINT NOT NULL,
    opened_at_us  BIGINT NOT NULL,
    updated_at_us BIGINT NOT NULL
);
CREATE INDEX account_summary_by_owner ON account_summary (owner, account_id);

CREATE TABLE account_history (
    account_id     TEXT COLLATE "C" NOT NULL,
    version        BIGINT NOT NULL,
    position       BIGINT NOT NULL,
    kind           TEXT NOT NULL,
    amount         BIGINT NOT NULL,
    balance_after  BIGINT NOT NULL,
    occurred_at_us BIGINT NOT NULL,
    PRIMARY KEY (account_id, version)
);

-- The last event-log position each projection has applied, committed in the
-- same transaction as the projection's rows.
CREATE TABLE projection_checkpoints (
    projection TEXT PRIMARY KEY,
    position   BIGINT NOT NULL
);
INSERT INTO projection_checkpoints (projection, position) VALUES ('account_summary', 0), ('account_history', 0);

-- Events the projector could not apply, set aside with the reason.
CREATE TABLE dead_letters (
    position            BIGINT PRIMARY KEY,
    subject             TEXT NOT NULL,
    event_type          TEXT,
    reason              TEXT NOT NULL,
    headers             TEXT NOT NULL,
    payload             BYTEA NOT NULL,
    dead_lettered_at_us BIGINT NOT NULL
);
