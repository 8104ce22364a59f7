ALTER TABLE workspace_executors
    ADD COLUMN IF NOT EXISTS name        TEXT,
    ADD COLUMN IF NOT EXISTS description TEXT NOT NULL DEFAULT '';
UPDATE workspace_executors SET name = 'executor-' || SUBSTRING(exe_id FROM 5 FOR 8) WHERE name IS NULL;
ALTER TABLE workspace_executors ALTER COLUMN name SET NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS uniq_workspace_executors_name ON workspace_executors (workspace_id, name);
