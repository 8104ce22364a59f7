-- SQLite cannot add a NOT NULL column without a default nor alter a column: rebuild the table.
CREATE TABLE workspace_executors_new (
    workspace_id TEXT NOT NULL,
    exe_id       TEXT NOT NULL REFERENCES executors(exe_id) ON DELETE CASCADE,
    is_default   INTEGER NOT NULL DEFAULT 0 CHECK (is_default IN (0,1)),
    created_at   TEXT NOT NULL,
    name         TEXT NOT NULL,
    description  TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (workspace_id, exe_id)
);
INSERT INTO workspace_executors_new (workspace_id, exe_id, is_default, created_at, name, description)
    SELECT workspace_id, exe_id, is_default, created_at, 'executor-' || substr(exe_id, 5, 8), ''
    FROM workspace_executors;
DROP TABLE workspace_executors;
ALTER TABLE workspace_executors_new RENAME TO workspace_executors;
CREATE INDEX IF NOT EXISTS idx_workspace_executors_workspace ON workspace_executors(workspace_id);
CREATE UNIQUE INDEX IF NOT EXISTS uniq_workspace_executors_name ON workspace_executors (workspace_id, name);
