-- The read model (SQLite). Times are microseconds since the Unix epoch.
CREATE TABLE account_summary (
    account_id    TEXT PRIMARY KEY,
    owner         TEXT NOT NULL,
    balance       BIGINT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('open', 'closed')),
    version       BIGINT NOT NULL,
    position      BIGINT NOT NULL,
    opened_at_us  BIGINT NOT NULL,
    updated_at_us BIGINT NOT NULL
);
CREATE INDEX account_summary_by_owner ON account_summary (owner, account_id);

CREATE TABLE account_history (
    account_id     TEXT NOT NULL,
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
    payload             BLOB NOT NULL,
    dead_lettered_at_us BIGINT NOT NULL
);
