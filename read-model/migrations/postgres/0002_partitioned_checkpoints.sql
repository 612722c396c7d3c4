-- Checkpoints per partition of the accounts (docs/scaling.md): one row per
-- projection and partition. A read model of one partition (the default) has
-- partition 0 only.
ALTER TABLE projection_checkpoints ADD COLUMN partition_index INTEGER NOT NULL DEFAULT 0;
ALTER TABLE projection_checkpoints DROP CONSTRAINT projection_checkpoints_pkey;
ALTER TABLE projection_checkpoints ADD PRIMARY KEY (projection, partition_index);
