-- Checkpoints per partition of the accounts (docs/scaling.md): one row per
-- projection and partition. A read model of one partition (the default, and
-- the only layout SQLite supports) has partition 0 only.
CREATE TABLE projection_checkpoints_by_partition (
    projection      TEXT NOT NULL,
    partition_index INTEGER NOT NULL,
    position        BIGINT NOT NULL,
    PRIMARY KEY (projection, partition_index)
);
INSERT INTO projection_checkpoints_by_partition (projection, partition_index, position)
    SELECT projection, 0, position FROM projection_checkpoints;
DROP TABLE projection_checkpoints;
ALTER TABLE projection_checkpoints_by_partition RENAME TO projection_checkpoints;
